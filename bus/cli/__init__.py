"""The `civicbus` command line. Each command group lives in its own module with a `register`."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="civicbus",
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
