"""The HTTP face of civicbus: the Open311 GeoReport v2 API (`create_app`)."""

from bus.api.app import create_app

__all__ = ["create_app"]
