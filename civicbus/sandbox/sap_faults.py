"""Failure injection for the SAP **simulation**: down (503, Retry-After), slow, reject, lost commit.

Tests and demos switch a fault on through the simulation's control endpoint; a fault may be
limited to a number of requests, after which the simulation behaves normally again.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

FaultMode = Literal["none", "down", "slow", "reject", "lose_commit_response"]


@dataclass
class Fault:
    mode: FaultMode = "none"
    #: For `down`: the Retry-After the simulation answers with, in seconds.
    retry_after: int = 5
    #: For `slow`: seconds to wait before answering.
    delay: float = 2.0
    #: For `reject`: the message SAP answers with.
    message: str = "Notification rejected by the simulated SAP (fault injection)"
    #: How many requests the fault affects; None: until switched off.
    remaining: int | None = None


class Faults:
    """The fault currently injected, shared by the simulation's routes; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fault = Fault()

    def set(self, fault: Fault) -> None:
        with self._lock:
            self._fault = fault

    def current(self) -> Fault:
        with self._lock:
            return self._fault

    def take(self, mode: FaultMode) -> Fault | None:
        """The active fault if it is of `mode`, counting one use of it."""
        with self._lock:
            fault = self._fault
            if fault.mode != mode:
                return None
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault = Fault()
            return fault
