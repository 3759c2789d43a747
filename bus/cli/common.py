"""What every CLI command shares: the runtime, and turning known errors into clear exits."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import typer

from bus.bootstrap import Runtime
from bus.config import ConfigError
from bus.store import StoreUnavailable


def command_modules() -> Iterator[ModuleType]:
    """Every module of bus/cli/ that defines `register(app)`: adding a command adds a module."""
    package = __name__.rpartition(".")[0]
    path = importlib.import_module(package).__path__
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        module = importlib.import_module(f"{package}.{info.name}")
        if hasattr(module, "register"):
            yield module


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
