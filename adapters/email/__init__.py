"""The `email` adapter kind: one SMTP message per request, for departments without a system."""

from adapters.email._adapter import EmailAdapter
from adapters.email._message import compose, message_id_for

__all__ = ["EmailAdapter", "compose", "message_id_for"]
