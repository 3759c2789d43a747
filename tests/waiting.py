"""Waiting in tests for something another thread or process does: one poll loop for all."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None],
    *,
    timeout: float = 15.0,
    what: str = "",
    explain: Callable[[], str] | None = None,
    interval: float = 0.05,
    tolerate: tuple[type[Exception], ...] = (),
) -> T:
    """Call `check` every `interval` seconds until it returns something truthy, and return it.
    After `timeout` seconds fail, saying `what` was awaited and, if given, `explain()` (the
    logs of the processes under test, say). `tolerate`: exceptions that mean "not yet" (a
    server still starting), named in the failure if the last try raised one."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
            last_error = None
        except tolerate as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            cause = f" (last error: {last_error!r})" if last_error else ""
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what or check}{cause}{detail}"
            )
        time.sleep(interval)
