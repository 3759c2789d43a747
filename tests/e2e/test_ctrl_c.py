"""Ctrl-C in the terminal of `civicbus run` sends SIGINT to every process of the group at once,
and the supervisor then sends each part SIGTERM: a part that is already stopping must finish
stopping cleanly rather than die of the second signal."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.city import base_env, civicbus_command

pytestmark = pytest.mark.timeout(60)


def test_the_sandbox_stopping_on_ctrl_c_survives_the_supervisors_sigterm(tmp_path: Path) -> None:
    args = ["sandbox", "--state-dir", str(tmp_path)]
    for name in ("sap", "permits", "parks", "mailbox"):
        args += ["--port", f"{name}=0"]
    proc = subprocess.Popen(
        [*civicbus_command(), *args],
        env=base_env(),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Ctrl-C stops" in line:
                break
        proc.send_signal(signal.SIGINT)
        # The supervisor's SIGTERM follows within its 0.2 s tick, while the simulators stop.
        time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"exit {proc.returncode}\n{err[-3000:]}"
    assert "sandbox: stopped" in out
