"""A legacy Oracle work-order database (WORK_ORDERS, WORK_ORDER_HISTORY), via SQLAlchemy Core.

The same adapter runs on Oracle (python-oracledb, thin mode), PostgreSQL and SQLite.
"""
