"""A service's start-up objects go to the collector's permanent generation, its garbage first."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from bus.heap import freeze_startup_objects


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def test_startup_garbage_is_collected_and_the_rest_frozen(unfrozen: None) -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a cycle: only the cycle collector frees it
    garbage = weakref.ref(a)
    del a, b
    kept = _Node()
    before = gc.get_freeze_count()

    freeze_startup_objects()

    assert garbage() is None
    assert gc.get_freeze_count() > before
    assert not any(obj is kept for obj in gc.get_objects())  # no generation holds it now
