"""The `permits` adapter kind: a permit and inspection system's case API over SOAP (zeep)."""

from adapters.permits._adapter import CREATE_CASE_FIELDS, PermitsAdapter

__all__ = ["CREATE_CASE_FIELDS", "PermitsAdapter"]
