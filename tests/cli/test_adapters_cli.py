"""`civicbus adapters list|check` against a config of memory-adapter instances."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from adapters.memory import MemoryBackend
from bus.cli import app

CONFIG = """
jurisdictions: [{id: test.example, name: Test}]
routing: {default: mem-ok}
instances:
  mem-ok:
    kind: memory
    mapping: mappings/memory.yaml
    settings: {backend: cli-test-ok}
  mem-down:
    kind: memory
    settings: {backend: cli-test-down}
  mem-secret:
    kind: memory
    settings: {backend: cli-test-ok}
    secrets: {password: CIVICBUS_CLI_TEST_SECRET}
  mem-bad-mapping:
    kind: memory
    mapping: mappings/broken.yaml
  ghost:
    kind: nosuchkind
  oracle-bad-zone:
    kind: oracle
    mapping: ORACLE_MAPPING
    settings: {url: "sqlite:///unused.db", timezone: Mars/Olympus}
"""
ORACLE_MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "oracle-facilities.yaml"


@pytest.fixture
def city(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "memory.yaml").write_text(
        "adapter: memory\nfields:\n  Text: {from: description}\n"
    )
    (tmp_path / "mappings" / "broken.yaml").write_text(
        "adapter: memory\nfields:\n  Text: {from: description, truncate: -1}\n"
    )
    (tmp_path / "civicbus.yaml").write_text(CONFIG.replace("ORACLE_MAPPING", str(ORACLE_MAPPING)))
    # Started from another folder: mapping paths start at the config file's folder.
    monkeypatch.chdir(tmp_path / "mappings")
    monkeypatch.delenv("CIVICBUS_CLI_TEST_SECRET", raising=False)
    MemoryBackend.named("cli-test-down").go_down()
    return tmp_path / "civicbus.yaml"


def invoke(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"CIVICBUS_CONFIG": str(config)})
    return result.exit_code, result.output


def test_list_shows_installed_kinds_and_configured_instances(city: Path) -> None:
    code, out = invoke(city, "adapters", "list")
    assert code == 0, out
    assert "memory       adapters.memory:MemoryAdapter" in out
    assert "mem-ok" in out and "mappings/memory.yaml" in out
    assert "ghost                nosuchkind" in out and "(kind not installed)" in out


def test_list_shows_mapping_paths_resolved_from_the_config_files_folder(city: Path) -> None:
    # The command runs from another folder (see `city`): the path shown is the one used.
    code, out = invoke(city, "adapters", "list")
    assert code == 0, out
    mapping = (city.parent / "mappings" / "memory.yaml").resolve()
    assert f"mem-ok               memory     {mapping}\n" in out
    assert "mem-down             memory     (no mapping)" in out


def test_check_says_what_is_wrong_with_each_instance(city: Path) -> None:
    code, out = invoke(city, "adapters", "check")
    assert code == 1
    lines = {line.split(":")[0]: line for line in out.splitlines() if ":" in line}
    assert lines["mem-ok"].startswith("mem-ok: ok")
    assert "FAIL: unreachable" in lines["mem-down"]
    assert "FAIL: missing secret" in lines["mem-secret"]
    assert "CIVICBUS_CLI_TEST_SECRET" in lines["mem-secret"]
    assert "FAIL: mapping problem" in lines["mem-bad-mapping"]
    assert "FAIL: kind not installed" in lines["ghost"]
    assert lines["oracle-bad-zone"].startswith(
        "oracle-bad-zone: FAIL: bad settings for kind oracle: oracle adapter oracle-bad-zone: "
        "timezone: unknown time zone 'Mars/Olympus'"
    )
    assert "broken.yaml:3: fields.Text.truncate" in out


def test_check_one_instance(city: Path) -> None:
    code, out = invoke(city, "adapters", "check", "mem-ok")
    assert code == 0, out
    assert "mem-ok: ok" in out and "ghost" not in out


def test_check_an_unknown_instance_lists_the_configured_ones(city: Path) -> None:
    code, out = invoke(city, "adapters", "check", "nope")
    assert code == 2
    assert "no adapter instance 'nope'" in out and "mem-ok" in out


def test_a_broken_config_is_reported_with_its_line(city: Path) -> None:
    city.write_text(CONFIG.replace("kind: nosuchkind", "kind: nosuchkind\n    prefetch: 0"))
    code, out = invoke(city, "adapters", "check")
    assert code == 2
    assert "instances.ghost.prefetch" in out


def test_a_one_shot_command_logs_no_info_lines_unless_asked(city: Path) -> None:
    env = {"CIVICBUS_CONFIG": str(city), "CIVICBUS_LOG_FORMAT": "json"}
    runner = CliRunner()

    quiet = runner.invoke(app, ["adapters", "check", "mem-ok"], env=env)
    verbose = runner.invoke(app, ["-v", "adapters", "check", "mem-ok"], env=env)
    by_env = runner.invoke(
        app, ["adapters", "check", "mem-ok"], env={**env, "CIVICBUS_LOG_LEVEL": "info"}
    )
    bad = runner.invoke(
        app, ["adapters", "check", "mem-ok"], env={**env, "CIVICBUS_LOG_LEVEL": "loud"}
    )

    assert quiet.exit_code == 0, quiet.output
    assert "adapter.built" not in quiet.output
    assert '"adapter.built"' in verbose.stderr and '"adapter.built"' in by_env.stderr
    assert bad.exit_code == 2
    assert "CIVICBUS_LOG_LEVEL='loud' is not a log level" in bad.stderr


def test_a_worker_for_an_instance_whose_settings_its_adapter_refuses_says_why(city: Path) -> None:
    code, out = invoke(city, "worker", "oracle-bad-zone")
    assert code == 2  # a configuration error, as a missing secret: no traceback
    assert out.startswith(
        "error: adapter instance 'oracle-bad-zone': oracle adapter oracle-bad-zone: timezone: "
        "unknown time zone 'Mars/Olympus' (an IANA name, e.g. America/Chicago or UTC)"
    ), out
