"""map_exceptions: a lower library's errors translated into ours by a table, in one place."""

from __future__ import annotations

import pytest

from adapters import PermanentError, TransientError, map_exceptions
from adapters._exceptions import ErrorTable

TABLE: ErrorTable = {ConnectionRefusedError: TransientError, ValueError: PermanentError}


def test_a_library_error_named_in_the_table_becomes_ours_with_the_context_and_its_cause() -> None:
    refused = ConnectionRefusedError("connection refused")
    with pytest.raises(TransientError) as raised, map_exceptions(TABLE, context="sap roads"):
        raise refused
    assert str(raised.value) == "sap roads: ConnectionRefusedError: connection refused"
    assert raised.value.__cause__ is refused
    with pytest.raises(PermanentError, match=r"^UnicodeDecodeError: "), map_exceptions(TABLE):
        b"\xff".decode()  # a ValueError subclass: the table's entry for ValueError applies


def test_our_own_errors_and_errors_the_table_does_not_name_pass_through_as_they_are() -> None:
    ours = PermanentError("request r1: rejected")
    with pytest.raises(PermanentError) as raised, map_exceptions(TABLE, context="ctx"):
        raise ours
    assert raised.value is ours
    unknown = KeyError("k")
    with pytest.raises(KeyError) as raised_unknown, map_exceptions(TABLE, context="ctx"):
        raise unknown
    assert raised_unknown.value is unknown
    with pytest.raises(KeyboardInterrupt), map_exceptions({BaseException: TransientError}):
        raise KeyboardInterrupt


def test_nothing_raised_nothing_changed_and_it_also_decorates_a_function() -> None:
    with map_exceptions(TABLE):
        value = 1 + 1
    assert value == 2

    @map_exceptions(TABLE, context="decorated")
    def call() -> None:
        raise ConnectionRefusedError("down")

    with pytest.raises(TransientError, match=r"^decorated: ConnectionRefusedError: down$"):
        call()
