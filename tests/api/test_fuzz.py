"""Fuzz the API from its own OpenAPI document with schemathesis (issue 2, Bad input).

Every operation gets bounded generated inputs (valid and invalid) over real HTTP; no input may
produce a 5xx, and every answer must be one the document declares (status, content type, JSON
schema, headers). Creates carry a valid api_key half of the time so intake is reached too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from bus.api import create_app
from tests.api.conftest import LiveServer, make_runtime

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, str]]:
    base: Path = tmp_path_factory.mktemp("fuzz")
    runtime = make_runtime(f"sqlite:///{base}/civicbus.db", base / "media")
    _, key = runtime.store.add_client("fuzzer")
    with LiveServer(create_app(runtime)) as live:
        yield live, key
    runtime.close()


def fuzz_operation(operation: Any, mode: GenerationMode, live: LiveServer, key: str) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case) -> None:
        if isinstance(case.body, dict) and "api_key" in case.body and len(str(case.body)) % 2:
            case.body["api_key"] = key
        case.call_and_validate(base_url=live.url, timeout=10, checks=CHECKS)

    try:
        run()
    except Unsatisfiable:
        # Nothing to make invalid (e.g. /healthz takes no input in negative mode): skip it.
        assert mode is GenerationMode.NEGATIVE


def operations(live: LiveServer) -> list[Any]:
    api = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    return [result.ok() for result in api.get_all_operations()]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_gives_a_server_error_and_answers_conform(
    fuzzed: tuple[LiveServer, str], mode: GenerationMode
) -> None:
    live, key = fuzzed
    found = operations(live)
    assert len(found) >= 9
    for operation in found:
        fuzz_operation(operation, mode, live, key)
