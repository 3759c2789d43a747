"""A legacy Oracle work-order database (WORK_ORDERS, WORK_ORDER_HISTORY), via SQLAlchemy Core.

The same adapter runs on Oracle (python-oracledb, thin mode), PostgreSQL and SQLite. The DDL for
Oracle is deploy/sandbox/oracle/schema.sql; `create_schema` makes the same tables elsewhere.
"""

from adapters.oracle._adapter import OracleAdapter
from adapters.oracle._tables import create_schema

__all__ = ["OracleAdapter", "create_schema"]
