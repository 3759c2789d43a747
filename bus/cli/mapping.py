"""`civicbus mapping check FILE` and `civicbus mapping try FILE REQUEST.json`: nothing is sent."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from adapters import PermanentError
from adapters.mapping import Mapping, MappingFileError, load_mapping
from adapters.registry import RegistryError, load_instance_mapping, load_kind
from bus.cli import command_group
from schemas.model import ServiceRequest


def register(app: typer.Typer) -> None:
    group = command_group(
        help="Mapping files: canonical request -> back-end fields, back-end status -> canonical.",
        no_args_is_help=True,
    )
    app.add_typer(group, name="mapping")

    @group.command("check")
    def check(file: Path = typer.Argument(..., metavar="FILE")) -> None:
        """Validate a mapping file; each problem is named with its line and field."""
        mapping = _load(file)
        typer.echo(
            f"ok: {file} (adapter {mapping.adapter}, {len(mapping.rules)} fields, "
            f"{len(mapping.statuses)} status codes)"
        )

    @group.command("try")
    def try_(
        file: Path = typer.Argument(..., metavar="FILE"),
        request_file: Path = typer.Argument(..., metavar="REQUEST.json"),
    ) -> None:
        """Print the back-end fields a request maps to, and the status table; sends nothing.

        REQUEST.json is a canonical request; id, jurisdiction, service_name and the
        timestamps may be left out.
        """
        mapping = _load(file)
        request = _read_request(request_file)
        try:
            payload = mapping.apply(request)
        except PermanentError as exc:
            typer.echo(f"the request would be dead-lettered: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(f"back-end fields for adapter {mapping.adapter}:")
        typer.echo(json.dumps(payload, indent=2, ensure_ascii=False, default=str))
        typer.echo("")
        typer.echo(_status_table(mapping))


def _load(file: Path) -> Mapping:
    """The mapping, checked as `adapters check` checks an instance's: it must also define the
    fields its adapter kind's back-end needs (when that kind is installed here)."""
    try:
        mapping = load_mapping(file)
        try:
            required = load_kind(mapping.adapter).mapping_fields
        except RegistryError as exc:
            typer.echo(f"note: {exc}; the fields its back-end needs are not checked", err=True)
            return mapping
        return load_instance_mapping(mapping.adapter, file, required)
    except (MappingFileError, RegistryError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def _read_request(path: Path) -> ServiceRequest:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        typer.echo(f"error: cannot read {path} ({exc.strerror})", err=True)
        raise typer.Exit(2) from exc
    except json.JSONDecodeError as exc:
        typer.echo(f"error: {path}:{exc.lineno}: not valid JSON ({exc.msg})", err=True)
        raise typer.Exit(2) from exc
    if not isinstance(data, dict):
        typer.echo(f"error: {path}: a request is a JSON object", err=True)
        raise typer.Exit(2)
    now = datetime.now(UTC).isoformat()
    defaults = {
        "id": f"try-{uuid.uuid4()}",
        "jurisdiction": "example",
        "service_name": data.get("service_code", "example"),
        "requested_at": now,
        "updated_at": now,
        "location": {},
    }
    try:
        return ServiceRequest.model_validate({**defaults, **data})
    except ValidationError as exc:
        problems = "\n  ".join(dict.fromkeys(_request_problem(err) for err in exc.errors()))
        typer.echo(f"error: {path} is not a canonical request:\n  {problems}", err=True)
        raise typer.Exit(2) from exc


def _request_problem(err: Any) -> str:
    """One error of a request file, in its own words; an attribute's answer in a request's:
    pydantic names each member of the union it tried (`attributes.X.str`, `...tuple[str, ...]`)."""
    loc = [str(p) for p in err["loc"]]
    if loc[:1] == ["attributes"] and len(loc) > 1:
        return (
            f'attributes.{loc[1]}: an answer is a text, as a form sends it ("3", not 3), or '
            "a list of texts for a multivaluelist"
        )
    return f"{'.'.join(loc) or '(top level)'}: {err['msg']}"


def _status_table(mapping: Mapping) -> str:
    rows = [("BACK-END STATUS", "CANONICAL", "OPEN311")]
    rows += [(code, s.value, s.open311) for code, s in mapping.statuses.items()]
    if mapping.status_default is not None:
        s = mapping.status_default
        rows.append(("(any other)", s.value, s.open311))
    elif len(rows) == 1:
        return "no status table: back-end status codes cannot be read back"
    width = [max(len(r[i]) for r in rows) for i in range(2)]
    return "\n".join(f"{a:<{width[0]}}  {b:<{width[1]}}  {c}" for a, b, c in rows)
