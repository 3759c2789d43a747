"""Which answers a take-down of what the resident wrote takes with it (bus.takedown
.written_answers): string and text answers, and any answer the service as configured now does
not show to be a number, a datetime or keys of its list; never a partner's external_id."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bus.takedown import written_answers
from schemas.model import (
    Attribute,
    AttributeAnswer,
    AttributeValue,
    Datatype,
    Service,
    ServiceRequest,
)
from tests.store.store_factories import make_request

LANES = (AttributeValue(key="carriageway", name="Road"), AttributeValue(key="kerb", name="Kerb"))


def attribute(code: str, datatype: Datatype, order: int, **more: object) -> Attribute:
    values = LANES if datatype.is_list else ()
    return Attribute.model_validate(
        {
            "code": code,
            "datatype": datatype,
            "description": code,
            "order": order,
            "values": values,
            **more,
        }
    )


SERVICE = Service(
    code="pothole",
    name="Pothole",
    jurisdiction="springfield",
    attributes=(
        attribute("PLATE", Datatype.STRING, 1),
        attribute("WHERE", Datatype.TEXT, 2),
        attribute("DEPTH", Datatype.NUMBER, 3),
        attribute("SEEN", Datatype.DATETIME, 4),
        attribute("LANE", Datatype.SINGLEVALUELIST, 5),
        attribute("LANES", Datatype.MULTIVALUELIST, 6),
        attribute("INFO", Datatype.TEXT, 7, variable=False),
        attribute("external_id", Datatype.STRING, 8),
    ),
)


def answering(**answers: AttributeAnswer) -> ServiceRequest:
    return make_request(attributes=answers)


@pytest.mark.parametrize(
    ("code", "answer", "taken"),
    [
        # What the resident wrote.
        ("PLATE", "HH-AB 123", True),
        ("WHERE", "Behind Jo Smith's house, where the dog bit me", True),
        # A quantity, a time, the city's own words: as the service defines them now.
        ("DEPTH", "8", False),
        ("DEPTH", "-2.5", False),
        ("SEEN", "2026-03-01T09:30:00+01:00", False),
        ("LANE", "carriageway", False),
        ("LANES", ("carriageway", "kerb"), False),
        ("LANE", ("kerb",), False),
        # Answers that no longer read as their datatype (the question was changed since):
        # the definition cannot vouch for them.
        ("DEPTH", "about a hand deep, ask Jo", True),
        ("DEPTH", "nan", True),
        ("DEPTH", ("8",), False),
        ("DEPTH", ("8", "9"), True),
        ("SEEN", "last Tuesday at Jo's", True),
        ("SEEN", "2026-03-01T09:30:00", True),  # no zone: never accepted as a datetime
        ("LANE", "in front of number 12", True),
        ("LANES", ("carriageway", "by the school gate"), True),
        ("LANES", (), True),
        # An informational attribute takes no answer: one stored anyway is not vouched for.
        ("INFO", "carriageway", True),
        # Gone from the config: whatever it holds, a string or a list.
        ("GONE", "Jo Smith, 12 Elm Street", True),
        ("GONE", ("carriageway",), True),
        ("GONE", "8", True),
        # A partner's reference for its report, not the resident's words.
        ("external_id", "fms-4711", False),
    ],
)
def test_an_answer_is_taken_down_unless_the_service_shows_it_is_not_prose(
    code: str, answer: AttributeAnswer, taken: bool
) -> None:
    written = written_answers(answering(**{code: answer}), SERVICE)

    assert written == ((code,) if taken else ())


def test_every_answer_of_a_service_no_longer_configured_is_taken_down_but_an_external_id() -> None:
    request = answering(DEPTH="8", LANE="carriageway", PLATE="HH-AB 123", external_id="x-1")

    assert written_answers(request, None) == ("DEPTH", "LANE", "PLATE")
    assert written_answers(request, SERVICE) == ("PLATE",)


def test_a_request_without_answers_has_none_to_take_down() -> None:
    assert written_answers(answering(), SERVICE) == ()


_codes = st.sampled_from(["PLATE", "WHERE", "DEPTH", "SEEN", "LANE", "LANES", "GONE"])
_text = st.text(min_size=1, max_size=20)
_answers: st.SearchStrategy[AttributeAnswer] = st.one_of(
    _text, st.tuples(_text), st.lists(st.text(max_size=20), max_size=4).map(tuple)
)


# Generation is cheap, yet its first draws can take over a second on a loaded 2-core machine (CI
# runs beside RabbitMQ and PostgreSQL): the too_slow health check failed this test there.
@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_codes, _answers, max_size=7))
def test_whatever_is_answered_only_numbers_datetimes_and_list_keys_stay(
    answers: dict[str, AttributeAnswer],
) -> None:
    written = set(written_answers(answering(**answers), SERVICE))

    assert written <= answers.keys()
    assert {"PLATE", "WHERE", "GONE"} & answers.keys() <= written
    keys = {value.key for value in LANES}
    for code in answers.keys() - written:
        answer = answers[code]
        values = (answer,) if isinstance(answer, str) else answer
        if code in ("LANE", "LANES"):
            assert values and set(values) <= keys
        else:
            assert code in ("DEPTH", "SEEN") and len(values) == 1
