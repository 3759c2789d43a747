"""SAP plant maintenance: notifications over OData (`API_MAINTNOTIFICATION`) or RFC (BAPIs).

`SapAdapter` chooses the transport per instance (`transport: odata | rfc`); `odata` and `rfc`
hold one transport each, with its own error table; `rfc_http` is a pyrfc-compatible client for the
sandbox's SAP simulation (not for real SAP systems).
"""

from adapters.sap._adapter import SapAdapter

__all__ = ["SapAdapter"]
