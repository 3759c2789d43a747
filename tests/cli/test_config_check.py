"""`civicbus config check`: the config and every mapping it names, checked before a restart."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bus.cli import app

SANDBOX = Path("deploy/sandbox/civicbus.yaml")


def sandbox_copy(tmp_path: Path, *replacements: tuple[str, str]) -> Path:
    """The sandbox config in another folder, its mapping paths kept pointing home."""
    text = SANDBOX.read_text().replace("../../mappings/", f"{Path('mappings').resolve()}/")
    for old, new in replacements:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "city.yaml"
    path.write_text(text)
    return path


def test_the_sandbox_config_and_its_mappings_check_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIVICBUS_CONFIG", str(SANDBOX))
    result = CliRunner().invoke(app, ["config", "check"])
    assert result.exit_code == 0, result.output
    assert "5 adapter instance(s)" in result.stdout
    assert "parks                ok: kind parks" in result.stdout


def test_every_broken_instance_is_named_with_what_is_wrong(tmp_path: Path) -> None:
    config = sandbox_copy(
        tmp_path,
        ("kind: parks", "kind: parkz"),
        ("mappings/permits.yaml", "mappings/permitz.yaml"),
    )
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert "sap-roads            ok: kind sap" in result.stdout  # the rest still checked
    assert "adapter kind 'parkz' is not installed" in result.stderr
    assert "permitz.yaml: cannot read the mapping file" in result.stderr


def test_a_secret_not_set_here_is_a_note_not_a_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CIVICBUS_SMTP_PASSWORD", raising=False)
    config = sandbox_copy(
        tmp_path,
        ("kind: email\n", "kind: email\n    secrets: {password: CIVICBUS_SMTP_PASSWORD}\n"),
    )
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 0, result.output
    assert "secret password comes from $CIVICBUS_SMTP_PASSWORD, which is not set here" in (
        result.stdout
    )


def test_a_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = sandbox_copy(tmp_path, ("default: email-311", "default: nowhere"))
    result = CliRunner().invoke(app, ["config", "check", str(config)])
    assert result.exit_code == 2
    assert "unknown adapter instance 'nowhere'" in result.stderr
