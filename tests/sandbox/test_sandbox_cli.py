"""`civicbus sandbox` starts the simulators, says where they listen, and stops on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from civicbus.sandbox import runner

CIVICBUS = Path(sys.executable).with_name("civicbus")

pytestmark = pytest.mark.timeout(60)


def test_sandbox_serves_each_simulator_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    names = ("permits", "parks", "mailbox")
    args = [str(CIVICBUS), "sandbox", "--state-dir", str(tmp_path)]
    for name in names:
        args += ["--only", name, "--port", f"{name}=0"]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops" in line:
                break
        controls = re.findall(r"\(control: (http://[^)]+)\)", "".join(lines))
        assert len(controls) == len(names), "".join(lines)
        answers = [httpx.get(url, timeout=5).json()["simulator"] for url in controls]
        assert sorted(answers) == sorted(names)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)

    assert proc.returncode == 0, err
    assert "sandbox: stopped" in out
    assert (tmp_path / "permits.db").exists() and (tmp_path / "parks.db").exists()


def test_an_unknown_simulator_is_named_in_the_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CIVICBUS), "sandbox", "--state-dir", str(tmp_path), "--only", "nonesuch"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "nonesuch" in result.stderr and "permits" in result.stderr


def test_the_list_names_every_port_a_simulator_takes() -> None:
    # `civicbus run` needs them all free; the mailbox listens on a second port for control.
    listed = subprocess.run(
        [str(CIVICBUS), "sandbox", "--list"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert [line.split()[0] for line in listed] == list(runner.SIMULATORS)
    mailbox = next(line for line in listed if line.startswith("mailbox"))
    assert "8325, 8326" in mailbox
