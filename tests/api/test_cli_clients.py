"""`civicbus clients add|list|revoke|allow-updates|deny-updates`: a key is printed once and works
on the API until revoked; only a client allowed to may post status updates."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bus.cli import app
from bus.store import Store
from tests.api.conftest import SANDBOX


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path}/civicbus.db"
    monkeypatch.setenv("CIVICBUS_CONFIG", SANDBOX)
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", url)
    monkeypatch.setenv("CIVICBUS_LOG_FORMAT", "json")
    return url


def test_clients_add_prints_the_key_once_and_list_and_revoke(cli_env: str) -> None:
    runner = CliRunner()
    added = runner.invoke(
        app, ["clients", "add", "fixmyapp", "--jurisdiction", "springfield.example"]
    )
    assert added.exit_code == 0, added.output
    key = added.stdout.strip().splitlines()[0]
    assert "shown only now" in added.stderr
    store = Store.open(cli_env)
    try:
        client = store.authenticate(key)
        assert client is not None and client.jurisdiction == "springfield.example"
        listed = runner.invoke(app, ["clients", "list"])
        assert listed.stdout.splitlines()[0] == "NAME\tJURISDICTION\tCREATED\tSTATE\tUPDATES"
        assert "fixmyapp\tspringfield.example" in listed.stdout
        assert listed.stdout.splitlines()[1].endswith("\tactive\tno")
        assert key not in listed.stdout
        assert runner.invoke(app, ["clients", "revoke", "fixmyapp"]).exit_code == 0
        assert store.authenticate(key) is None
        assert "revoked" in runner.invoke(app, ["clients", "list"]).stdout
        assert runner.invoke(app, ["clients", "revoke", "nobody"]).exit_code == 1
    finally:
        store.close()


def test_clients_add_rejects_unknown_jurisdiction_and_duplicates(cli_env: str) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["clients", "add", "x", "--jurisdiction", "atlantis"])
    assert unknown.exit_code == 2
    assert "unknown jurisdiction 'atlantis'" in unknown.stderr
    assert runner.invoke(app, ["clients", "add", "twice"]).exit_code == 0
    again = runner.invoke(app, ["clients", "add", "twice"])
    assert again.exit_code == 1 and "already exists" in again.stderr


def test_clients_add_refuses_two_jurisdictions_rather_than_keep_the_last(cli_env: str) -> None:
    two = ["--jurisdiction", "springfield.example", "--jurisdiction", "shelbyville.example"]
    refused = CliRunner().invoke(app, ["clients", "add", "both", *two])
    assert refused.exit_code == 2
    assert "one jurisdiction, or to all when --jurisdiction is left out" in refused.stderr
    store = Store.open(cli_env)
    try:
        assert [c.name for c in store.list_clients()] == []  # no key made for half of it
    finally:
        store.close()


def _updates_column(runner: CliRunner) -> dict[str, str]:
    listed = runner.invoke(app, ["clients", "list"])
    assert listed.exit_code == 0, listed.output
    return {line.split("\t")[0]: line.split("\t")[-1] for line in listed.stdout.splitlines()[1:]}


def test_only_a_client_added_with_updates_may_post_status_updates(cli_env: str) -> None:
    runner = CliRunner()
    resident = runner.invoke(app, ["clients", "add", "resident-app"])
    desk = runner.invoke(app, ["clients", "add", "roads-desk", "--updates"])
    assert resident.exit_code == desk.exit_code == 0, resident.output + desk.output
    assert "not post status updates (--updates)" in resident.stderr
    assert "and post status updates" in desk.stderr

    assert _updates_column(runner) == {"resident-app": "no", "roads-desk": "yes"}
    store = Store.open(cli_env)
    try:
        for added, may in ((resident, False), (desk, True)):
            client = store.authenticate(added.stdout.strip().splitlines()[0])
            assert client is not None and client.may_post_updates is may
    finally:
        store.close()


def test_allow_and_deny_updates_change_an_existing_client(cli_env: str) -> None:
    runner = CliRunner()
    key = runner.invoke(app, ["clients", "add", "partner"]).stdout.strip().splitlines()[0]

    allowed = runner.invoke(app, ["clients", "allow-updates", "partner"])
    assert allowed.exit_code == 0, allowed.output
    assert allowed.stdout == "client 'partner' may post status updates\n"
    assert _updates_column(runner) == {"partner": "yes"}
    store = Store.open(cli_env)
    try:
        client = store.authenticate(key)
        assert client is not None and client.may_post_updates
        denied = runner.invoke(app, ["clients", "deny-updates", "partner"])
        assert denied.exit_code == 0, denied.output
        assert denied.stdout == "client 'partner' may no longer post status updates\n"
        client = store.authenticate(key)
        assert client is not None and not client.may_post_updates
        assert _updates_column(runner) == {"partner": "no"}

        for command in ("allow-updates", "deny-updates"):
            unknown = runner.invoke(app, ["clients", command, "nobody"])
            assert unknown.exit_code == 1 and "no active client named 'nobody'" in unknown.stderr
        assert runner.invoke(app, ["clients", "revoke", "partner"]).exit_code == 0
        revoked = runner.invoke(app, ["clients", "allow-updates", "partner"])
        assert revoked.exit_code == 1 and "no active client named 'partner'" in revoked.stderr
    finally:
        store.close()
