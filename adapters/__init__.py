"""The adapter SDK: the contract every back-end adapter implements.

Read `adapters/_contract.py` to learn the whole contract.
"""

from adapters._contract import Adapter, Health, Receipt, SkippedChange, UpdatePage
from adapters._exceptions import (
    AdapterError,
    ErrorTable,
    PermanentError,
    TransientError,
    map_exceptions,
)
from schemas.model import StatusUpdate

__all__ = [
    "Adapter",
    "AdapterError",
    "ErrorTable",
    "Health",
    "PermanentError",
    "Receipt",
    "SkippedChange",
    "StatusUpdate",
    "TransientError",
    "UpdatePage",
    "map_exceptions",
]
