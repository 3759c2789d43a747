"""The `civicbus` command line. Each command group lives in its own module with a `register`."""

from __future__ import annotations

from typing import Any, Literal

import typer

#: Help texts are docstrings, paragraphs of lines wrapped in the source: markdown joins each
#: paragraph's lines before the terminal rewraps them (rich mode keeps every line break, and
#: rewraps each line on its own).
HELP_MARKUP: Literal["markdown"] = "markdown"


def command_group(**options: Any) -> typer.Typer:
    """A command group whose help reads as the top-level command's does."""
    return typer.Typer(rich_markup_mode=HELP_MARKUP, **options)


app = typer.Typer(
    name="civicbus",
    rich_markup_mode=HELP_MARKUP,
    help="civicbus: Open311 intake, a message bus, and adapters to city back-office systems.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _main(
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Also log info lines (services always do)."
    ),
) -> None:
    """civicbus: Open311 intake, a message bus, and adapters to city back-office systems."""
    from bus.cli.common import configure_cli_logging

    configure_cli_logging(verbose=verbose)


def _register_commands() -> None:
    # Imported here so that `bus.cli` loads fast and each module stays one command group.
    from bus.cli import common

    for module in common.command_modules():
        module.register(app)


_register_commands()
