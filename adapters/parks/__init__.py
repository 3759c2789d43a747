"""The `parks` adapter kind: a parks work-request system over REST/JSON with OAuth2 (httpx)."""

from adapters.parks._adapter import ParksAdapter

__all__ = ["ParksAdapter"]
