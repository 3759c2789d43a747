"""Content-based router: which adapter instance gets a newly created request, and by which rule.

The rules are the config's (`routing.rules`, first match wins); a request no rule matches goes to
`routing.default`, so none is ever dropped.
"""

from __future__ import annotations

import structlog

from bus.config import Config
from schemas.events import Envelope, EventType

log = structlog.get_logger(__name__)


def route(config: Config, envelope: Envelope) -> tuple[str, str]:
    """The adapter instance for a `civicbus.request.created` envelope and the matching rule's name.

    The rule name is `default` when no rule matched. An envelope whose data lacks the service
    code or jurisdiction still goes to the default instance, with a warning.
    """
    if envelope.type is not EventType.CREATED:
        raise ValueError(f"only {EventType.CREATED} events are routed, not {envelope.type}")
    service_code = envelope.data.get("service_code")
    jurisdiction = envelope.data.get("jurisdiction")
    if not isinstance(service_code, str) or not isinstance(jurisdiction, str):
        log.warning(
            "routing.incomplete_request",
            request_id=envelope.subject,
            message_id=envelope.id,
            has_service_code=isinstance(service_code, str),
            has_jurisdiction=isinstance(jurisdiction, str),
        )
        return config.routing.default, "default"
    return config.route(service_code, jurisdiction)
