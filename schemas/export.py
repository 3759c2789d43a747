"""JSON Schema files of the canonical model, for consumers written in other languages.

`civicbus schemas export` writes them under `schemas/json/`; a test fails when the committed
files differ from what the models generate, so they never drift.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.events import Envelope
from schemas.model import Service, ServiceRequest, StatusUpdate

#: File stem -> model. The envelope's schema describes every event on the bus.
EXPORTED: dict[str, type[BaseModel]] = {
    "service": Service,
    "service_request": ServiceRequest,
    "status_update": StatusUpdate,
    "event_envelope": Envelope,
}

SCHEMA_DIR = Path(__file__).parent / "json"


def render_schemas() -> dict[str, str]:
    """File name -> JSON text of each exported model's schema (stable, sorted keys)."""
    files = {}
    for stem, model in EXPORTED.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"https://civicbus.example/schemas/{stem}.json"
        files[f"{stem}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return files


def export_schemas(directory: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema file into `directory`; returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
