"""`civicbus adapters check` on URL settings gone wrong, against the parks simulator on loopback:
each verdict says what happened and which setting (or environment variable) to check."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bus.cli import app
from civicbus.sandbox.parks import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from civicbus.sandbox.runner import SIMULATORS, Running, ServeOptions
from tests.ports import free_port

pytestmark = pytest.mark.timeout(120)

MAPPING = Path(__file__).resolve().parents[2] / "mappings" / "parks.yaml"
SECRET = "CIVICBUS_TEST_PARKS_SECRET"
WRONG_SECRET = "CIVICBUS_TEST_PARKS_WRONG_SECRET"


@pytest.fixture
def parks(tmp_path: Path) -> Iterator[Running]:
    running = SIMULATORS["parks"].serve(ServeOptions(state_dir=tmp_path / "parks", port=0))
    yield running
    running.stop()


def _instance(name: str, base_url: str, secret: str = SECRET) -> str:
    return f"""
  {name}:
    kind: parks
    mapping: {MAPPING}
    settings: {{base_url: "{base_url}", client_id: {SANDBOX_CLIENT_ID}}}
    secrets: {{client_secret: {secret}}}"""


@pytest.fixture
def city(tmp_path: Path, parks: Running) -> tuple[Path, int]:
    """A config of parks instances, each with one URL setting wrong; and the closed port."""
    port = free_port()
    host_port = parks.url.split("://", 1)[1]
    instances = "".join(
        [
            _instance("sanitation", parks.url),
            _instance("wrong-port", f"http://127.0.0.1:{port}"),
            _instance("wrong-path", f"{parks.url}/api"),
            _instance("https-to-http", f"https://{host_port}"),
            _instance("unknown-host", "http://no-such-host.invalid"),
            _instance("no-scheme", host_port),
            _instance("wrong-secret", parks.url, secret=WRONG_SECRET),
            f'\n  receiver-down:\n    kind: webhook\n    settings: {{url: "http://127.0.0.1:{port}/hook"}}',
        ]
    )
    config = tmp_path / "civicbus.yaml"
    config.write_text(
        "jurisdictions: [{id: test.example, name: Test}]\n"
        f"routing: {{default: sanitation}}\ninstances:{instances}\n"
    )
    return config, port


def invoke(config: Path, *args: str) -> tuple[int, str]:
    env = {
        "CIVICBUS_CONFIG": str(config),
        SECRET: SANDBOX_CLIENT_SECRET,
        WRONG_SECRET: "not-the-secret",
    }
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.output


def verdicts(out: str) -> dict[str, str]:
    return {line.split(":", 1)[0]: line for line in out.splitlines() if ": " in line}


def test_check_says_what_each_url_problem_means_and_which_setting_to_check(
    city: tuple[Path, int], parks: Running
) -> None:
    config, port = city
    code, out = invoke(config, "adapters", "check")

    assert code == 1
    said = verdicts(out)
    assert said["sanitation"].startswith("sanitation: ok"), out
    assert (
        f"cannot connect to 127.0.0.1:{port} (connection refused): is the parks system running "
        "there, on that port? check settings.base_url of instance wrong-port"
    ) in said["wrong-port"]
    assert (
        f"HTTP 404 Not Found (no token endpoint at {parks.url}/api/oauth/token: check "
        "settings.base_url of instance wrong-path (or set settings.token_url))"
    ) in said["wrong-path"]
    assert (
        "which answers plain http (TLS: wrong version number): use http://, or the port"
        in (said["https-to-http"])
    )
    assert "cannot find the host no-such-host.invalid (" in said["unknown-host"]
    assert "check settings.base_url of instance unknown-host" in said["unknown-host"]
    assert said["no-scheme"].startswith(
        "no-scheme: FAIL: bad settings for kind parks: parks adapter no-scheme: the setting "
        "`base_url` must be an http:// or https:// URL"
    )
    # The secret is named by the environment variable it is read from: that is what to fix.
    assert (
        "refused the client credentials (HTTP 401): check settings.client_id and "
        f"settings.client_secret (environment variable {WRONG_SECRET}) of instance wrong-secret"
    ) in said["wrong-secret"]
    assert (
        f"receiver-down: FAIL: http://127.0.0.1:{port}/hook cannot be reached: cannot connect to "
        f"127.0.0.1:{port} (connection refused): is the receiver running there, on that port? "
        "check settings.url of instance receiver-down"
    ) == said["receiver-down"]
    for line in said.values():
        assert "Errno" not in line and "ConnectError" not in line and "'…'" not in line


def test_a_worker_for_a_base_url_without_a_scheme_is_a_one_line_config_error(
    city: tuple[Path, int],
) -> None:
    config, _ = city
    code, out = invoke(config, "worker", "no-scheme")

    assert code == 2
    assert out.startswith(
        "error: adapter instance 'no-scheme': parks adapter no-scheme: the setting `base_url` "
        "must be an http:// or https:// URL"
    ), out
    assert len(out.strip().splitlines()) == 1
