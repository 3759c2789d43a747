"""The committed JSON Schema files are exactly what the models generate."""

from __future__ import annotations

import json

import jsonschema
from typer.testing import CliRunner

from bus.cli import app
from schemas.asyncapi import render_asyncapi
from schemas.export import SCHEMA_DIR, render_schemas


def test_committed_json_schemas_are_current() -> None:
    stale = [
        name
        for name, text in render_schemas().items()
        if not (SCHEMA_DIR / name).exists() or (SCHEMA_DIR / name).read_text() != text
    ]
    assert not stale, f"run `civicbus schemas export`: stale {stale}"


def test_each_exported_schema_is_a_valid_json_schema() -> None:
    for text in render_schemas().values():
        jsonschema.Draft202012Validator.check_schema(json.loads(text))


def test_cli_export_writes_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    json_dir, asyncapi = tmp_path / "json", tmp_path / "asyncapi.yaml"
    json_dir.mkdir()
    result = CliRunner().invoke(
        app, ["schemas", "export", "--dir", str(json_dir), "--asyncapi", str(asyncapi)]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in json_dir.iterdir()) == sorted(render_schemas())
    # The event documentation too: one command after a change to the models.
    assert asyncapi.read_text() == render_asyncapi()
