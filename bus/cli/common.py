"""What every CLI command shares: the runtime, and turning known errors into clear exits."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from types import ModuleType

import typer

from bus.bootstrap import Runtime
from bus.config import ConfigError, Environment
from bus.logging import configure_logging
from bus.store import NotAnswering, StoreUnavailable, not_answering_advice

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
#: Longer ago than any request: a bound that keeps `now - age` inside the calendar.
_MAX_DAYS = 36_500


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
def runtime(*, existing_store: bool = False) -> Iterator[Runtime]:
    """A Runtime for one command; config and store errors become a message and exit code 2
    (with a line of advice when the database did not answer: no error of a driver says where
    to look for a server that is there but silent). `existing_store`: for commands that look
    into the store, whose SQLite file must be there (see Runtime)."""
    rt = Runtime(existing_store=existing_store)
    try:
        yield rt
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    except StoreUnavailable as exc:
        typer.echo(f"error: the store is unavailable: {exc}", err=True)
        if isinstance(exc, NotAnswering):
            typer.echo(f"advice: {not_answering_advice(rt.env.database_url)}", err=True)
        raise typer.Exit(2) from exc
    finally:
        rt.close()


def parse_duration(text: str, option: str) -> timedelta:
    """The text of a duration option (`option`, e.g. `--older-than`) as a timedelta:
    a number and a unit, s, m, h or d; BadParameter (exit 2) naming the option otherwise."""
    match = _DURATION.match(text)
    if match is None:
        raise typer.BadParameter(
            f"{text!r} is not a duration: a number and a unit, s, m, h or d (e.g. 10m)",
            param_hint=option,
        )
    number, unit = match[1].lstrip("0") or "0", match[2]
    # The length first: int() refuses numbers of thousands of digits (and 12 are ages).
    if len(number) > 12 or int(number) * UNIT_SECONDS[unit] > _MAX_DAYS * UNIT_SECONDS["d"]:
        raise typer.BadParameter(
            f"{text!r} is too long ago: at most {_MAX_DAYS}d (100 years)", param_hint=option
        )
    return timedelta(seconds=int(number) * UNIT_SECONDS[unit])
