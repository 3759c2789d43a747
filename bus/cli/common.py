"""What every CLI command shares: the runtime, and turning known errors into clear exits."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

import typer

from bus.bootstrap import Runtime
from bus.config import ConfigError, Environment
from bus.logging import configure_logging
from bus.store import StoreUnavailable

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def command_modules() -> Iterator[ModuleType]:
    """Every module of bus/cli/ that defines `register(app)`: adding a command adds a module."""
    package = __name__.rpartition(".")[0]
    path = importlib.import_module(package).__path__
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        module = importlib.import_module(f"{package}.{info.name}")
        if hasattr(module, "register"):
            yield module


def configure_cli_logging(*, service: bool = False, verbose: bool = False) -> None:
    """A one-shot command logs warnings and errors only, so that its answer is what an
    operator reads; a service (api, relay, worker...) logs its info lines too.
    $CIVICBUS_LOG_LEVEL, when set, is the level of both."""
    env = Environment.from_env()
    level = env.log_level or ("INFO" if service or verbose else "WARNING")
    if level.upper() not in _LEVELS:
        typer.echo(
            f"error: CIVICBUS_LOG_LEVEL={level!r} is not a log level: one of {', '.join(_LEVELS)}",
            err=True,
        )
        raise typer.Exit(2)
    configure_logging(env.log_format, level.upper())


def service_logging() -> None:
    """Called first by a long-running command: it logs what it does, at info."""
    configure_cli_logging(service=True)


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
