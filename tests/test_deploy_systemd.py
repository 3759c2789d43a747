"""deploy/systemd: every unit passes `systemd-analyze verify`, and every ExecStart is a civicbus
command that exists, with options it takes."""

from __future__ import annotations

import configparser
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bus.cli.run import parts_for

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"
INSTALLED = "/opt/civicbus/.venv/bin/civicbus"
HERE = str(Path(sys.executable).with_name("civicbus"))  # this checkout's installed command
SERVICES = sorted(UNITS.glob("*.service"))


def exec_start(unit: Path, instance: str = "sap-roads") -> list[str]:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    return shlex.split(parser["Service"]["ExecStart"].replace("%i", instance))


def test_there_is_a_unit_for_every_part_civicbus_run_supervises() -> None:
    supervised = {part.args[:2] for part in parts_for(["sap-roads"], "127.0.0.1", 8311, False)}
    assert {tuple(exec_start(unit)[1:3]) for unit in SERVICES} == supervised


@pytest.mark.parametrize("unit", SERVICES, ids=lambda p: p.name)
def test_each_exec_start_is_a_civicbus_command_that_parses(unit: Path) -> None:
    command = exec_start(unit)
    assert command[0] == INSTALLED
    done = subprocess.run(
        [HERE, *command[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_finds_nothing_wrong_with_the_units(tmp_path: Path) -> None:
    names = []
    for unit in [*SERVICES, UNITS / "civicbus.target"]:
        text = unit.read_text().replace(INSTALLED, HERE)
        name = unit.name.replace("@.service", "@sap-roads.service")
        (tmp_path / name).write_text(text)
        names.append(name)

    done = subprocess.run(
        ["systemd-analyze", "verify", *names],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert (done.returncode, done.stderr.strip()) == (0, ""), done.stderr
