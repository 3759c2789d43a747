"""How zeep's and requests' failures become TransientError or PermanentError, in one place.

Most errors are classified by type through `ERRORS`. Three carry their class in their data
instead: a SOAP fault by its fault code (Client/Sender: our request was refused; Server/Receiver:
the permit system failed), an HTTP error by its status (4xx refused, except 408/429; 5xx failed),
and a refused DTD by its document: an HTML page (a maintenance or proxy error page, whatever its
HTTP status) is a permit system not working right now, any other DTD a hostile or broken one.
A 404 or 405, at the SOAP address or for the WSDL, is a wrong URL (`wsdl`, `endpoint`): transient,
so that a setting fixed in time loses no request to the dead-letter queue, and worded, as refused
connections are, by adapters/_http.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from http import HTTPStatus

import requests
import zeep.exceptions

from adapters._exceptions import (
    AdapterError,
    ErrorTable,
    PermanentError,
    TransientError,
    blank_quoted,
    map_exceptions,
)
from adapters._http import NOT_SERVED, AnswerTooLarge, AnswerTooSlow, Where
from adapters.permits._transport import Redirected, Throttled

ERRORS: ErrorTable = {
    # A hostile or broken back-end: retrying gets the same document back. (An HTML page's
    # DOCTYPE is a back-end down for now: `soap_errors` makes it transient first.)
    zeep.exceptions.DTDForbidden: PermanentError,
    zeep.exceptions.EntitiesForbidden: PermanentError,
    # Our values do not fit the WSDL's types: the mapping or the data must change.
    zeep.exceptions.ValidationError: PermanentError,
    # A garbled answer (a proxy's error page, a cut connection) may be fine next time.
    zeep.exceptions.XMLSyntaxError: TransientError,
    # An answer past settings.answer_timeout or max_answer_mb: a permit system in trouble.
    AnswerTooSlow: TransientError,
    AnswerTooLarge: TransientError,
    requests.Timeout: TransientError,
    requests.ConnectionError: TransientError,
    OSError: TransientError,
}

_RETRYABLE_HTTP = frozenset({408, 425, 429})
# zeep names a refused DTD by its DOCTYPE declaration (lxml's, without an internal subset). The
# document is refused either way; the class only says whether retrying may meet SOAP again.
_HTML_DOCTYPE = re.compile(r"\s*<!DOCTYPE\s+html\b", re.IGNORECASE)
_CLIENT_FAULTS = ("client", "sender")
# Quoted values in a fault string may be a resident's data; element names ('{ns}name') are kept.
_ELEMENT_NAME = re.compile(r"'\{[^}\s]*\}[\w.\-]+'")


class DuplicateCase(PermanentError):
    """The permit system already holds a case with this external reference."""


def fault_kind(fault: zeep.exceptions.Fault) -> type[AdapterError]:
    """PermanentError for a client (sender) fault, TransientError for anything else."""
    code = str(fault.code or "").rpartition(":")[2]
    if code.endswith(".DuplicateReference"):
        return DuplicateCase
    return PermanentError if code.split(".")[0].lower() in _CLIENT_FAULTS else TransientError


def safe_fault_text(fault: zeep.exceptions.Fault) -> str:
    """The fault code and message with quoted values blanked out (they may be personal data)."""
    message = blank_quoted(str(fault.message or ""), keep=_is_element_name)[:300]
    return f"SOAP fault {fault.code}: {message}"


def _is_element_name(quoted: str) -> bool:
    return _ELEMENT_NAME.fullmatch(quoted) is not None


@contextmanager
def soap_errors(context: str, where: Where, address: str | None = None) -> Iterator[None]:
    """Raise any failure of the block as TransientError or PermanentError, with `context`;
    `where` says what to check when the URL fails, `address` is the SOAP address called."""
    with map_exceptions(ERRORS, context=context, describe=where.describe):
        try:
            yield
        except zeep.exceptions.Fault as fault:
            raise fault_kind(fault)(f"{context}: {safe_fault_text(fault)}") from fault
        except zeep.exceptions.DTDForbidden as exc:
            if not _HTML_DOCTYPE.match(str(exc.name or "")):
                raise  # to ERRORS: permanent
            raise TransientError(
                f"{context}: the permit system answered an HTML page, not SOAP (down for "
                "maintenance, or a proxy's error page)"
            ) from exc
        except Throttled as exc:
            raise TransientError(
                f"{context}: the permit system is busy ({exc})", retry_after=exc.seconds
            ) from exc
        except Redirected as exc:
            # Not followed: the call carries a case's data, for the address configured only.
            raise TransientError(
                f"{context}: {address or 'the SOAP address'} answered {exc}, not followed: if "
                f"the permit system moved, {where.advice}"
            ) from exc
        except zeep.exceptions.XMLParseError as exc:
            # An answer that does not fit the WSDL (a missing caseId, an unknown element): not
            # the request's data; and a CreateCase may have created the case, which a retry finds.
            raise TransientError(
                f"{context}: the permit system's answer does not fit its WSDL ({exc}): is the "
                "WSDL the one this permit system serves?"
            ) from exc
        except zeep.exceptions.TransportError as exc:
            status = exc.status_code
            if 200 <= status < 300:  # zeep's word for an answer that is not well-formed XML
                raise TransientError(
                    f"{context}: the permit system answered HTTP {status} with a document that "
                    "is not well-formed XML (cut short?)"
                ) from exc
            if status in NOT_SERVED:
                phrase = HTTPStatus(status).phrase
                said = where.not_served(status, phrase, address or "its address", "SOAP service")
                raise TransientError(f"{context}: {said}") from exc
            kind = (
                PermanentError
                if 400 <= status < 500 and status not in _RETRYABLE_HTTP
                else TransientError
            )
            raise kind(f"{context}: HTTP {status} from the permit system") from exc
        except requests.HTTPError as exc:  # loading the WSDL
            answer = exc.response
            if answer is None or answer.status_code not in NOT_SERVED:
                raise  # to ERRORS: transient, as an OSError
            said = where.not_served(
                answer.status_code, answer.reason, answer.url, "WSDL", query=True
            )
            raise TransientError(f"{context}: {said}") from exc
