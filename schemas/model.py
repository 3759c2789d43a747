"""The canonical citizen-service model: what civicbus means by a service and a request.

Every channel (Open311, later SMS and e-mail) is translated into these types, and every
back-end adapter translates out of them. The module imports nothing from the outside world.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


def _require_zone(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("datetime must carry a time zone")
    return value


#: A datetime that always carries a zone: a naive one is ambiguous across the city's clocks.
AwareDatetime = Annotated[datetime, AfterValidator(_require_zone)]


class Status(StrEnum):
    """The extended status set; each maps to Open311's open/closed."""

    OPEN = "open"
    INVESTIGATING = "investigating"
    IN_PROGRESS = "in_progress"
    ACTION_SCHEDULED = "action_scheduled"
    PLANNED = "planned"
    FIXED = "fixed"
    CLOSED = "closed"
    DUPLICATE = "duplicate"
    NOT_COUNCILS_RESPONSIBILITY = "not_councils_responsibility"
    NO_FURTHER_ACTION = "no_further_action"
    INTERNAL_REFERRAL = "internal_referral"
    CANCELLED = "cancelled"
    REOPEN = "reopen"
    FOR_TRIAGE = "for_triage"

    @property
    def is_closed(self) -> bool:
        return self in _CLOSED_STATUSES

    @property
    def open311(self) -> str:
        """The core GeoReport v2 status: `open` or `closed`."""
        return "closed" if self.is_closed else "open"


_CLOSED_STATUSES = frozenset(
    {
        Status.FIXED,
        Status.CLOSED,
        Status.DUPLICATE,
        Status.NOT_COUNCILS_RESPONSIBILITY,
        Status.NO_FURTHER_ACTION,
        Status.INTERNAL_REFERRAL,
        Status.CANCELLED,
    }
)


class ServiceType(StrEnum):
    """How a service answers a create: an id at once, a token, or nothing."""

    REALTIME = "realtime"
    BATCH = "batch"
    BLACKBOX = "blackbox"


class Datatype(StrEnum):
    """The six Open311 attribute datatypes."""

    STRING = "string"
    NUMBER = "number"
    DATETIME = "datetime"
    TEXT = "text"
    SINGLEVALUELIST = "singlevaluelist"
    MULTIVALUELIST = "multivaluelist"

    @property
    def is_list(self) -> bool:
        return self in (Datatype.SINGLEVALUELIST, Datatype.MULTIVALUELIST)


class Channel(StrEnum):
    """Where a report came in."""

    WEB = "web"
    MOBILE = "mobile"
    SMS = "sms"
    EMAIL = "email"
    PHONE = "phone"
    COUNTER = "counter"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AttributeValue(_Model):
    """One allowed value of a list attribute."""

    key: str = Field(min_length=1)
    name: str


class Attribute(_Model):
    """A question a service asks beyond the standard fields."""

    code: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    datatype: Datatype
    description: str
    order: int = Field(ge=1)
    required: bool = False
    #: False for informational attributes that take no input (Open311 `variable`).
    variable: bool = True
    datatype_description: str | None = None
    values: tuple[AttributeValue, ...] = ()


class Service(_Model):
    """A type of request the city accepts."""

    code: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    name: str
    description: str = ""
    group: str = ""
    keywords: tuple[str, ...] = ()
    type: ServiceType = ServiceType.REALTIME
    jurisdiction: str
    attributes: tuple[Attribute, ...] = ()
    agency: str | None = None
    service_notice: str | None = None

    @property
    def metadata(self) -> bool:
        """Open311 `metadata`: whether the service defines attributes."""
        return bool(self.attributes)

    def attribute(self, code: str) -> Attribute | None:
        return next((a for a in self.attributes if a.code == code), None)


class Location(_Model):
    """Where the problem is: a WGS84 point, an address, or an address id."""

    lat: float | None = Field(default=None, ge=-90, le=90)
    long: float | None = Field(default=None, ge=-180, le=180)
    address: str | None = None
    address_id: str | None = None
    zipcode: str | None = None


#: The longest note a status update holds (adapters cut a back-end's longer ones to it).
NOTE_MAX_LENGTH = 4000

#: The latest status updates an event's `data.history` carries (Open311's notes list them all).
#: Every event copies them: with the whole history, a request updated in a loop made each event
#: larger than the last, and the outbox grow with the square of the updates.
EVENT_HISTORY = 20


class Reporter(_Model):
    """The resident's contact data. Personal data: never logged, audited or returned by reads."""

    email: str | None = None
    first_name: str | None = None
    last_name: str | None = None
    phone: str | None = None
    device_id: str | None = None
    account_id: str | None = None


class Media(_Model):
    """A photo or document attached to a request: stored content-addressed, or an outside URL."""

    url: str
    content_type: str | None = None
    sha256: str | None = None


class BackendRef(_Model):
    """The request's identity in one back-end (the cross-reference)."""

    adapter: str
    reference: str
    submitted_at: AwareDatetime


class StatusNote(_Model):
    """One entry of a request's status history."""

    status: Status
    at: AwareDatetime
    note: str | None = None
    source: str
    update_id: str | None = None
    external_status_code: str | None = None
    media_url: str | None = None


#: Where a ServiceRequest keeps its JSON form once dumped (not a field: pydantic's dumps, equality
#: and repr look at the fields only).
_JSON_FORM = "_json_form"

#: An attribute's answer: one value, or several for a multivaluelist.
AttributeAnswer = str | tuple[str, ...]


class ServiceRequest(_Model):
    """One canonical citizen-service request, whatever channel it came in on."""

    id: str
    jurisdiction: str
    service_code: str
    service_name: str
    status: Status = Status.OPEN
    status_notes: str | None = None
    description: str | None = Field(default=None, max_length=4000)
    attributes: dict[str, AttributeAnswer] = Field(default_factory=dict)
    location: Location
    reporter: Reporter = Field(default_factory=Reporter)
    media: tuple[Media, ...] = ()
    channel: Channel = Channel.WEB
    agency: str | None = None
    service_notice: str | None = None
    requested_at: AwareDatetime
    updated_at: AwareDatetime
    expected_at: AwareDatetime | None = None
    # Kept apart from updated_at, which is the time of the latest status applied: a status
    # update dated before updated_at is recorded as late (history only), so a take-down moving
    # updated_at would make the back-end's next update, dated by its own clock before the
    # take-down, look late, and would postpone the retention of a closed request's contact data.
    taken_down_at: AwareDatetime | None = Field(
        default=None,
        description="when what the resident wrote or photographed was last taken down "
        "(`civicbus requests take-down`); null when never. A take-down is a change: it moves "
        "`changed_at` too",
    )
    # Apart from updated_at too, which is the sender's time of the latest status: a back-end
    # whose clock runs behind ours, or a change its feed gives late, dates a status before
    # changes an Open311 client has already seen, and a client polling `updated_after` by the
    # latest `updated_datetime` it saw would never be told of it.
    changed_at: AwareDatetime | None = Field(
        default=None,
        description="when civicbus last recorded a change to the request (created, handed "
        "over to a back-end, a status update or note, a take-down), on civicbus's clock: "
        "Open311's `updated_datetime`, which `updated_after` and `updated_before` filter by",
    )
    backend_refs: tuple[BackendRef, ...] = ()
    history: tuple[StatusNote, ...] = ()

    @property
    def modified_at(self) -> datetime:
        """When the request as it reads last changed (Open311's `updated_datetime`, which
        `updated_after` polls by): when civicbus recorded it; for a request not from the store,
        its latest status or a later take-down."""
        if self.changed_at is not None:
            return self.changed_at
        if self.taken_down_at is not None and self.taken_down_at > self.updated_at:
            return self.taken_down_at
        return self.updated_at

    def without_personal_data(self) -> ServiceRequest:
        """A copy safe for logs, audit details and public events."""
        return self.model_copy(update={"reporter": Reporter()})

    def json_form(self) -> dict[str, Any]:
        """The request's JSON form, `model_dump(mode="json")`, dumped once per request object:
        a worker's adapter (its payload or mapping) and the `submitted` event read the same
        request. A new dict each call, but its nested values are shared by every call: change
        its top level only."""
        memo = self.__dict__.get(_JSON_FORM)
        # The dump is kept with the id of the request it is of: model_copy (and copy, pickle)
        # carries __dict__ over to another request, which may differ, and must dump itself.
        if memo is None or memo[0] != id(self):
            # model_dump(mode="json") without the method's keyword arguments (a tenth of the dump)
            memo = (id(self), self.__pydantic_serializer__.to_python(self, mode="json"))
            self.__dict__[_JSON_FORM] = memo  # the model is frozen to fields, not to __dict__
        return dict(memo[1])

    def public_data(self) -> dict[str, Any]:
        """The request as events carry it: its JSON form with the reporter's contact emptied
        (the dump of `without_personal_data()`, without copying the model first) and its
        latest EVENT_HISTORY status updates. As with `json_form`, change its top level only."""
        data = self.json_form()
        data["reporter"] = dict.fromkeys(data["reporter"])
        if len(data["history"]) > EVENT_HISTORY:
            data["history"] = data["history"][-EVENT_HISTORY:]
        return data


class StatusUpdate(_Model):
    """A status change for one request, from a back-end, a partner or an operator."""

    request_id: str
    status: Status
    at: AwareDatetime
    update_id: str
    source: str
    note: str | None = Field(default=None, max_length=NOTE_MAX_LENGTH)
    external_status_code: str | None = None
    media_url: str | None = None

    def says_the_same_as(self, note: StatusNote) -> bool:
        """Whether `note` already records what this update says: the same status at the same
        instant, with the same description, media and back-end status code. Who sent it
        (`source`) is not part of what it says."""
        return (
            self.status is note.status
            and self.at == note.at
            and self.note == note.note
            and self.media_url == note.media_url
            and self.external_status_code == note.external_status_code
        )
