"""Fixtures of the adapter tests: the sandbox's simulated back-ends, each on a free loopback port
with its state in the test's tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from backends_support import simulator

from civicbus.sandbox.runner import Running


@pytest.fixture
def parks(tmp_path: Path) -> Iterator[Running]:
    """The REST parks simulator, for the parks adapter's tests and its conformance run."""
    with simulator("parks", tmp_path) as running:
        yield running


@pytest.fixture
def permits(tmp_path: Path) -> Iterator[Running]:
    """The SOAP permit simulator, for the permits adapter's tests and its conformance run."""
    with simulator("permits", tmp_path) as running:
        yield running


@pytest.fixture
def sap_sim(tmp_path: Path) -> Iterator[Running]:
    """The SAP simulation (OData and RFC), for both transports' tests and conformance runs."""
    with simulator("sap", tmp_path) as running:
        yield running
