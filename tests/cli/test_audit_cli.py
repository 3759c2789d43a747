"""`civicbus db upgrade`, `civicbus audit trail` and `civicbus audit verify` on a real store."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from bus.cli import app
from bus.store import Store
from tests.store.store_factories import make_request


@pytest.fixture
def store_env(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CIVICBUS_DATABASE_URL", sqlite_url)
    return sqlite_url


def _audit_two_hops(url: str) -> None:
    store = Store.open(url)
    try:
        with store.transaction() as tx:
            tx.audit(actor="api:test", action="accepted", request_id="r-1", message_id="m-1")
        with store.transaction() as tx:
            tx.audit(actor="relay", action="routed", request_id="r-1", details={"rule": "roads"})
    finally:
        store.close()


def test_db_upgrade_creates_the_store_and_is_safe_to_repeat(store_env: str) -> None:
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, ["db", "upgrade"])
        assert result.exit_code == 0, result.output
        assert "store is up to date" in result.output


def test_audit_trail_shows_every_hop_in_order(store_env: str) -> None:
    _audit_two_hops(store_env)
    result = CliRunner().invoke(app, ["audit", "trail", "r-1"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert [line.split()[1] for line in lines] == ["accepted", "routed"]
    assert "rule=roads" in lines[1]


def test_audit_trail_of_an_unknown_request_says_so(store_env: str) -> None:
    Store.open(store_env).close()
    result = CliRunner().invoke(app, ["audit", "trail", "nope"])
    assert result.exit_code == 1
    assert "error: no audit entries for request nope" in result.output


def test_audit_trail_of_a_batch_token_shows_its_request_and_says_which(store_env: str) -> None:
    store = Store.open(store_env)
    try:
        with store.transaction() as tx:
            tx.add_request(make_request("r-9"), token="T01M92GEHJHKC12PZZEKSM78Q7R")
            tx.audit(actor="api:test", action="accepted", request_id="r-9")
    finally:
        store.close()
    runner = CliRunner()

    found = runner.invoke(app, ["audit", "trail", "T01M92GEHJHKC12PZZEKSM78Q7R"])
    unknown = runner.invoke(app, ["audit", "trail", "T01M92GEHJHKC12PZZEKSM7XXXX"])

    assert found.exit_code == 0, found.output
    assert found.stderr.strip() == "token T01M92GEHJHKC12PZZEKSM78Q7R is request r-9"
    assert [line.split()[1] for line in found.stdout.splitlines()] == ["accepted"]
    assert unknown.exit_code == 1
    assert "no audit entries for request T01M92GEHJHKC12PZZEKSM7XXXX (nor is it a batch token)" in (
        unknown.output
    )


def test_audit_verify_passes_then_detects_an_edited_entry(store_env: str) -> None:
    _audit_two_hops(store_env)
    runner = CliRunner()
    ok = runner.invoke(app, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "intact: 2 entries" in ok.output

    engine = sa.create_engine(store_env)
    with engine.begin() as conn:
        table = sa.Table("audit_log", sa.MetaData(), autoload_with=conn)
        conn.execute(sa.update(table).where(table.c.action == "routed").values(outcome="error"))
    engine.dispose()
    broken = runner.invoke(app, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "BROKEN" in broken.output


def test_audit_verify_prints_the_head_and_checks_a_recorded_one(store_env: str) -> None:
    _audit_two_hops(store_env)
    runner = CliRunner()

    ok = runner.invoke(app, ["audit", "verify"])
    head = ok.output.split("head ")[1].split()[0]
    again = runner.invoke(app, ["audit", "verify", "--expect-head", head.upper()])
    elsewhere = runner.invoke(app, ["audit", "verify", "--expect-head", "ab" * 32])
    bad = runner.invoke(app, ["audit", "verify", "--expect-head", "not-a-hash"])

    assert ok.exit_code == 0 and len(head) == 64 and "(entry 2)" in ok.output
    assert again.exit_code == 0, again.output
    assert elsewhere.exit_code == 1 and "BROKEN" not in elsewhere.output  # no entry is
    assert elsewhere.output.startswith(f"audit log: the expected head {'ab' * 32} is not on the")
    assert "(which ends at id 2)" in elsewhere.output
    assert bad.exit_code == 2 and "'not-a-hash' is not a head hash" in bad.output


def test_audit_verify_without_its_head_row_reports_broken_not_a_traceback(store_env: str) -> None:
    _audit_two_hops(store_env)
    engine = sa.create_engine(store_env)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_log WHERE id = 2")
        conn.exec_driver_sql("DELETE FROM audit_head")
    engine.dispose()

    result = CliRunner().invoke(app, ["audit", "verify"])

    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "audit log BROKEN at entry 2: the chain's head row is missing" in result.output
