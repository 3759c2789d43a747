"""Which store a command opens: the commands that look into one never create an empty one, and
a database URL the store cannot use is a one-line error, not a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bus.cli import app
from bus.store import Store

SANDBOX = Path(__file__).resolve().parents[2] / "deploy" / "sandbox" / "civicbus.yaml"

#: What an operator runs to look for a stuck request: each would have found nothing wrong in a
#: new, empty store made where it was run.
INSPECTING = [
    ["status"],
    ["audit", "verify"],
    ["audit", "trail", "01M9943D4NYH1DVYHT2AH0WMPY"],
    ["dead", "list", "sap-roads"],
    ["requests", "stuck"],
    ["requests", "show", "01M9943D4NYH1DVYHT2AH0WMPY"],
]


def invoke(*args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env={"CIVICBUS_CONFIG": str(SANDBOX), **env})
    return result.exit_code, result.output


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder other than civicbus's, with CIVICBUS_DATABASE_URL at its default."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CIVICBUS_DATABASE_URL", raising=False)
    return tmp_path


@pytest.mark.parametrize("command", INSPECTING, ids=" ".join)
def test_a_command_looking_into_the_store_refuses_to_create_one(
    elsewhere: Path, command: list[str]
) -> None:
    code, out = invoke(*command)
    assert code == 2, out
    assert out.startswith(
        f"error: no civicbus store at {elsewhere / 'civicbus.db'} (sqlite:///civicbus.db is a "
        "path from the current folder: run this command in the folder civicbus runs in)"
    ), out
    assert not (elsewhere / "civicbus.db").exists()


def test_an_absolute_path_to_no_store_says_so_too(tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "civicbus.db"
    code, out = invoke("status", CIVICBUS_DATABASE_URL=f"sqlite:///{missing}")
    assert code == 2
    assert out == (
        f"error: no civicbus store at {missing}; CIVICBUS_DATABASE_URL names the store "
        "civicbus runs on\n"
    )


def test_the_store_where_it_is_is_read_and_named_by_its_whole_path(elsewhere: Path) -> None:
    Store.open("sqlite:///civicbus.db").close()  # as `civicbus run` leaves it
    code, out = invoke("audit", "verify")
    assert code == 0, out
    _, out = invoke("status")  # exit 1 or 0, as the machine's broker has the sandbox's queues
    assert f"store    sqlite:///{elsewhere / 'civicbus.db'}\n" in out


def test_db_upgrade_still_creates_the_store(elsewhere: Path) -> None:
    code, out = invoke("db", "upgrade")
    assert code == 0, out
    assert (elsewhere / "civicbus.db").exists()


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("mysql://civicbus@db/civicbus", "unsupported database 'mysql': use sqlite or postgresql"),
        ("civicbus.db", "not a database URL: give sqlite:///PATH or postgresql://USER@HOST/"),
        (
            "postgresql://civicbus:s3cret@127.0.0.1/test?query_timeout=abc",
            "query_timeout='abc' in the database URL: give seconds, 0 or more",
        ),
        ("sqlite:///civicbus.db?timeout=-1", "timeout='-1' in the database URL: give seconds"),
    ],
)
def test_a_database_url_the_store_cannot_use_is_a_one_line_error(
    elsewhere: Path, url: str, said: str
) -> None:
    for command in (["db", "upgrade"], ["status"]):
        code, out = invoke(*command, CIVICBUS_DATABASE_URL=url)
        assert code == 2, out
        assert out.startswith(f"error: CIVICBUS_DATABASE_URL: {said}"), out
        assert "Traceback" not in out and "s3cret" not in out
