"""A statement's query plan as one line, on SQLite or PostgreSQL, for the tests that check
a query is answered from an index."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection


def query_plan(connection: Connection, statement: str, parameters: Any = None) -> str:
    """The plan of ``statement`` (with the driver's ``parameters``), its lines joined by
    " / ". PostgreSQL is first told to avoid sequential scans, so that a plan without an
    index shows one as "Seq Scan" rather than a cheaper scan of a small table."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql("SET enable_seqscan = off")
        rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters)
        return " / ".join(str(row[0]) for row in rows)
    rows = connection.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)
    return " / ".join(str(row[-1]) for row in rows)
