-- The sandbox city's legacy facilities work-order database, as it exists on Oracle.
-- civicbus's oracle adapter (adapters/oracle) reads and writes these two tables; its SQLAlchemy
-- definitions (adapters/oracle/_tables.py) mirror this file, so the same adapter also runs on
-- PostgreSQL and SQLite (tests, sandbox). Times are UTC. X/Y are projected in the city's CRS
-- (EPSG:32616, WGS 84 / UTM zone 16N, metres).
--
-- Text lengths are in characters (VARCHAR2(n CHAR)), as SQLAlchemy declares them: without CHAR,
-- Oracle's default NLS_LENGTH_SEMANTICS=BYTE makes VARCHAR2(n) hold n bytes, and accented text
-- near the limit fails with ORA-12899. A city's existing schema may well be BYTE (check with
-- SELECT column_name, char_used FROM user_tab_columns WHERE table_name = 'WORK_ORDERS'; B means
-- bytes): mappings/oracle-facilities.yaml therefore also cuts text by bytes (max_bytes).

CREATE SEQUENCE work_order_seq START WITH 1 INCREMENT BY 1 NOCACHE;
CREATE SEQUENCE work_order_history_seq START WITH 1 INCREMENT BY 1 NOCACHE;

CREATE TABLE work_orders (
    id             NUMBER(19)         NOT NULL,
    external_ref   VARCHAR2(64 CHAR)  NOT NULL,
    work_type      VARCHAR2(20 CHAR)  NOT NULL,
    priority       NUMBER(1),
    description    VARCHAR2(2000 CHAR),
    address        VARCHAR2(200 CHAR),
    x              NUMBER(12, 3),
    y              NUMBER(12, 3),
    status         VARCHAR2(20 CHAR)  DEFAULT 'NEW' NOT NULL,
    created_at     TIMESTAMP(6)       NOT NULL,
    updated_at     TIMESTAMP(6)       NOT NULL,
    CONSTRAINT pk_work_orders PRIMARY KEY (id),
    CONSTRAINT uq_work_orders_external_ref UNIQUE (external_ref)
);
CREATE INDEX ix_work_orders_updated_at ON work_orders (updated_at);

CREATE TABLE work_order_history (
    id             NUMBER(19)         NOT NULL,
    work_order_id  NUMBER(19)         NOT NULL,
    status         VARCHAR2(20 CHAR)  NOT NULL,
    note           VARCHAR2(400 CHAR),
    changed_at     TIMESTAMP(6)       NOT NULL,
    CONSTRAINT pk_work_order_history PRIMARY KEY (id),
    CONSTRAINT fk_work_order_history_order FOREIGN KEY (work_order_id)
        REFERENCES work_orders (id)
);
CREATE INDEX ix_work_order_history_order ON work_order_history (work_order_id);

-- The account civicbus connects as needs only:
--   GRANT SELECT, INSERT ON work_orders TO civicbus;
--   GRANT SELECT, INSERT ON work_order_history TO civicbus;
--   GRANT SELECT ON work_order_seq TO civicbus;
--   GRANT SELECT ON work_order_history_seq TO civicbus;
