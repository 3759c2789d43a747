"""Every statement the Oracle adapter issues, compiled for the Oracle dialect and checked there.

No Oracle database runs here, so Oracle-only mistakes (LIMIT, literals, a missing sequence, quoted
lower-case names that would miss the upper-case tables) are caught by compiling.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import oracle
from sqlalchemy.schema import CreateSequence, CreateTable

from adapters.oracle import _statements as sql
from adapters.oracle._tables import metadata, work_order_history, work_orders

SECRET_REF = "req-a1b2c3-literal-check"
WHEN = datetime(2026, 1, 2, 3, 4, 5)

STATEMENTS = {
    "insert_work_order": sql.insert_work_order(
        SECRET_REF, {"work_type": "LIGHTING", "priority": 2, "x": 1.5, "y": 2.5}, "NEW", WHEN
    ),
    "insert_history": sql.insert_history(41, "NEW", "civicbus", WHEN),
    "select_by_reference": sql.select_by_reference(SECRET_REF),
    "select_changed_since": sql.select_changed_since(WHEN),
    "select_changed_since_beginning": sql.select_changed_since(None),
    "probe": sql.probe(),
    "update_status": sql.update_status(41, "DONE", WHEN),
}


def oracle_sql(statement: sa.ClauseElement) -> str:
    return str(statement.compile(dialect=oracle.dialect()))


@pytest.mark.parametrize("name", sorted(STATEMENTS))
def test_every_statement_compiles_for_oracle_with_bind_parameters_only(name: str) -> None:
    compiled = STATEMENTS[name].compile(dialect=oracle.dialect())
    text = str(compiled)
    assert "LIMIT" not in text.upper() and "OFFSET" not in text.upper()
    assert SECRET_REF not in text and "2026" not in text and "'" not in text, "a literal leaked"
    assert '"' not in text, "lower-case names must render unquoted to match Oracle's tables"
    assert re.search(r":\w+", text) or name == "select_changed_since_beginning"
    assert "?" not in text and "%(" not in text  # Oracle's named binds, not qmark/pyformat
    assert set(compiled.params) <= {p for p in re.findall(r":(\w+)", text)} | set()


def test_the_insert_takes_its_id_from_the_sequence() -> None:
    text = oracle_sql(STATEMENTS["insert_work_order"])
    assert "work_order_seq.nextval" in text
    assert oracle_sql(STATEMENTS["insert_history"]).count("work_order_history_seq.nextval") == 1


def test_changes_are_read_in_change_time_order_without_a_row_limit() -> None:
    text = oracle_sql(STATEMENTS["select_changed_since"])
    assert "WHERE work_orders.updated_at >= :updated_at_1" in text
    assert text.endswith("ORDER BY work_orders.updated_at, work_orders.id")
    assert "ROWNUM" not in text and "FETCH FIRST" not in text


def test_the_table_definitions_match_the_oracle_ddl() -> None:
    ddl = (Path(__file__).resolve().parents[2] / "deploy/sandbox/oracle/schema.sql").read_text()
    orders = str(CreateTable(work_orders).compile(dialect=oracle.dialect()))
    history = str(CreateTable(work_order_history).compile(dialect=oracle.dialect()))
    for column in work_orders.columns:
        assert re.search(rf"^\s+{column.name}\s", ddl, re.M), f"{column.name} missing from DDL"
    assert "VARCHAR2(64 CHAR)" in orders and "external_ref" in orders
    assert "updated_at TIMESTAMP NOT NULL" in orders  # not DATE: sub-second change times
    assert "x NUMERIC(12, 3)" in orders  # an ANSI alias of NUMBER(12, 3) on Oracle
    assert "UNIQUE (external_ref)" in orders and "uq_work_orders_external_ref" in ddl
    assert "FOREIGN KEY(work_order_id) REFERENCES work_orders (id)" in history
    for sequence in ("work_order_seq", "work_order_history_seq"):
        seq = metadata.tables["work_orders"].c.id.default if sequence == "work_order_seq" else None
        assert f"CREATE SEQUENCE {sequence}" in ddl
        if seq is not None:
            assert sequence in str(CreateSequence(seq).compile(dialect=oracle.dialect()))


def test_the_oracle_ddl_sizes_text_in_characters_not_bytes() -> None:
    # VARCHAR2(n) alone is n bytes under Oracle's default NLS_LENGTH_SEMANTICS=BYTE.
    ddl = (Path(__file__).resolve().parents[2] / "deploy/sandbox/oracle/schema.sql").read_text()
    code = "\n".join(line for line in ddl.splitlines() if not line.startswith("--"))
    sizes = re.findall(r"VARCHAR2\(([^)]*)\)", code)
    assert len(sizes) == 7 and all(re.fullmatch(r"\d+ CHAR", size) for size in sizes), sizes
