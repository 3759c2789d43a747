"""deploy/systemd: every unit passes `systemd-analyze verify`, every ExecStart is a civicbus
command that exists, with options it takes, and each timer starts a one-shot job."""

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
TIMERS = sorted(UNITS.glob("*.timer"))
#: The jobs a timer starts (retention); every other service is a long-running part.
JOBS = [unit.with_suffix(".service") for unit in TIMERS]


def sections(unit: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    return parser


def exec_start(unit: Path, instance: str = "sap-roads") -> list[str]:
    return shlex.split(sections(unit)["Service"]["ExecStart"].replace("%i", instance))


def test_there_is_a_unit_for_every_part_civicbus_run_supervises() -> None:
    supervised = {part.args[:2] for part in parts_for(["sap-roads"], "127.0.0.1", 8311, False)}
    parts = [unit for unit in SERVICES if unit not in JOBS]
    assert {tuple(exec_start(unit)[1:3]) for unit in parts} == supervised


def test_the_retention_jobs_run_once_a_day_each_from_its_timer() -> None:
    assert {tuple(exec_start(job)[1:3]) for job in JOBS} == {
        ("store", "prune"),
        ("privacy", "forget"),
    }
    for timer, job in zip(TIMERS, JOBS, strict=True):
        assert job.exists(), f"{timer.name} starts {job.name}, which is missing"
        assert sections(job)["Service"]["Type"] == "oneshot"
        assert "Restart" not in sections(job)["Service"]
        assert "Install" not in sections(job)  # started by its timer, not by civicbus.target
        assert sections(timer)["Timer"]["OnCalendar"].startswith("*-*-* ")
        assert sections(timer)["Install"]["WantedBy"] == "timers.target"


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
    for unit in [*SERVICES, *TIMERS, UNITS / "civicbus.target"]:
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
