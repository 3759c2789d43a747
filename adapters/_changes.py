"""One change read from a back-end's change feed, as a StatusUpdate: for adapters that poll.

A change feed is data civicbus does not control. A change that cannot become a StatusUpdate must
not fail the whole page: the poller would never move its watermark past it, and every later
change of that back-end would be held back. So a clerk's note longer than an update holds is cut
to fit, and a change that still does not fit (a field missing or unreadable) raises
`UnreadableChange`, and the adapter skips that change alone: it goes in the page's `skipped`,
which the poller logs and audits. Its text names the fields at fault and what is wrong with
them, never their values: a note may quote a resident. So does a status code the mapping lacks.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import ValidationError

from adapters._contract import SkippedChange
from adapters.mapping import Mapping
from schemas.model import NOTE_MAX_LENGTH, StatusUpdate

#: Ends a note that was cut, so a reader knows there was more.
CUT_MARK = "…"


class UnreadableChange(Exception):
    """A back-end change that cannot become a StatusUpdate; the text names fields, not values."""


def require(**fields: Any) -> None:
    """Raise UnreadableChange naming the fields that are missing (None) from a change."""
    missing = [name for name, value in fields.items() if value is None]
    if missing:
        raise UnreadableChange(f"missing {', '.join(missing)}")


def fit_note(note: Any) -> Any:
    """A note longer than an update holds, cut to fit and ending with '…'; else as it is."""
    if isinstance(note, str) and len(note) > NOTE_MAX_LENGTH:
        return note[: NOTE_MAX_LENGTH - len(CUT_MARK)] + CUT_MARK
    return note


def status_update(**fields: Any) -> StatusUpdate:
    """A StatusUpdate of one change's fields, its note cut to fit; UnreadableChange names the
    fields the model refuses and why (e.g. `note: string_type`)."""
    try:
        return StatusUpdate(**{**fields, "note": fit_note(fields.get("note"))})
    except ValidationError as exc:
        # `from None`: the ValidationError's own text quotes the values.
        raise UnreadableChange(refused_fields(exc)) from None


def refused_fields(exc: ValidationError) -> str:
    """`field: error type` for each error of `exc`, without the input values it quotes."""
    return "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'value'}: {error['type']}"
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    )


def unmapped_status(
    change: str, code: str, mapping: Mapping, request_id: str | None
) -> SkippedChange:
    """A change whose status code the instance's mapping does not know, and the line to add."""
    return SkippedChange(
        change=change,
        problem=f"status code {code!r} is not in the mapping {mapping.source}",
        request_id=request_id,
        fix=f"add `{code}: <canonical status>` under `statuses`",
    )


def page_parts(
    read: Iterable[StatusUpdate | SkippedChange],
) -> tuple[tuple[StatusUpdate, ...], tuple[SkippedChange, ...]]:
    """A page's changes as read, in order: the updates, and the changes skipped."""
    items = list(read)
    return (
        tuple(item for item in items if isinstance(item, StatusUpdate)),
        tuple(item for item in items if isinstance(item, SkippedChange)),
    )
