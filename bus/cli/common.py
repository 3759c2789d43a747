"""What every CLI command shares: the runtime, and turning known errors into clear exits."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import typer

from bus.bootstrap import Runtime
from bus.config import ConfigError
from bus.store import StoreUnavailable

#: The command modules under bus/cli/, each exposing `register(app)`. Add yours here.
COMMAND_MODULES: tuple[str, ...] = ()


def command_modules() -> Iterator[ModuleType]:
    for name in COMMAND_MODULES:
        yield importlib.import_module(f"bus.cli.{name}")


@contextmanager
def runtime() -> Iterator[Runtime]:
    """A Runtime for one command; config and store errors become a message and exit code 2."""
    rt = Runtime()
    try:
        yield rt
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except StoreUnavailable as exc:
        typer.echo(f"error: the store is unavailable: {exc}", err=True)
        raise typer.Exit(2) from exc
    finally:
        rt.close()
