"""Reading query values the tolerant way: empty means absent, and a bad value is a 400."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from fastapi import Request

from bus.api.context import ApiContext
from bus.api.wire import Open311Problem
from schemas.open311 import InvalidValue, check_text

T = TypeVar("T")


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.civicbus
    return ctx


def given(value: str | None) -> str | None:
    """A query value stripped; an empty one is absent (old clients send `jurisdiction_id=`)."""
    if value is None:
        return None
    value = value.strip()
    return value or None


def read(parse: Callable[[], T]) -> T:
    """Run one value parser, turning its InvalidValue into a 400."""
    try:
        return parse()
    except InvalidValue as exc:
        raise Open311Problem(400, str(exc)) from None


def text(name: str, value: str | None) -> str | None:
    """A free-text query value, checked for control characters and length."""
    value = given(value)
    if value is not None:
        read(lambda: check_text(name, value))
    return value


def collect(problems: list[str], parse: Callable[[], T]) -> T | None:
    """Run one value parser, collecting its error instead of raising (to report all at once)."""
    try:
        return parse()
    except InvalidValue as exc:
        problems.append(str(exc))
        return None


def window(
    problems: list[str],
    start: datetime | None,
    end: datetime | None,
    *,
    now: datetime,
    max_days: int = 90,
) -> tuple[datetime, datetime] | None:
    """A [start, end] range of at most `max_days`, defaulting to the last `max_days`."""
    span = timedelta(days=max_days)
    if start is None and end is None:
        return now - span, now
    if start is None:
        assert end is not None
        return end - span, end
    if end is None:
        end = min(now, start + span) if start < now else start + span
    if end < start:
        problems.append("end_date: must not be before start_date")
        return None
    if end - start > span:
        problems.append(f"start_date/end_date: the range may be at most {max_days} days")
        return None
    return start, end
