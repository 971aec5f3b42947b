"""Connecting to the Latigo database and keeping its schema current.

SQLite is the embedded default; several processes share one file, so every connection
uses WAL, waits for locks instead of failing, and takes the write lock when a transaction
begins (``BEGIN IMMEDIATE``), which avoids the deadlock of two readers upgrading at once.
PostgreSQL is used as it is.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import alembic.command
import sqlalchemy
import sqlalchemy.exc
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection, Dialect, Engine, Table, event
from sqlalchemy.dialects import postgresql, sqlite

from latigo.errors import Caught, Unavailable, translated

# the alembic folder, at the top of the repository (and of the Docker image); Latigo runs
# from a checkout or an editable install, which keeps it beside the package
ALEMBIC_DIR = Path(__file__).resolve().parent.parent / "alembic"
# how often a new SQLite connection tries to switch a fresh file to WAL while others hold it
WAL_ATTEMPTS = 50
# pause between those attempts, seconds
WAL_RETRY_S = 0.1
# how long a SQLite connection waits for another process's write lock, in milliseconds
SQLITE_BUSY_TIMEOUT_MS = 30_000
# libpq settings so that no call can block forever: a server that accepts the connection
# but never answers, or a network split mid-query, ends in an error (transient) instead
POSTGRES_TIMEOUTS = {"connect_timeout": 10, "tcp_user_timeout": 60_000, "keepalives_idle": 30}
# rows per INSERT statement in bulk writes (SQLite allows 32766 bound parameters)
BULK_ROWS = 2_000
# rows bound and held at once by NewRows: one executemany (SQLite), one write to COPY (PostgreSQL)
NEW_ROWS_CHUNK = 20_000
# what COPY's text format escapes in a value (a field ends at a tab, a row at a newline)
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
# the driver's errors about the connection or the server, as SQLAlchemy wraps them: the
# database cannot be reached
UNREACHABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
# what the database's failures are to Latigo: UNREACHABLE is an outage; others (a constraint
# violated, bad SQL) are the caller's and leave as they are
DATABASE_ERRORS = (
    Caught(
        UNREACHABLE,
        Unavailable,
        "{dependency} unavailable: {error.orig!r:.480}",
    ),
)


def create_engine(url: str, *, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = sqlalchemy.create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            insertmanyvalues_page_size=BULK_ROWS,
        )
        _make_sqlite_transactional(engine)
        return engine
    # bulk inserts go out as multi-row statements of BULK_ROWS rows (SQLAlchemy's default: 1000)
    return sqlalchemy.create_engine(
        url, echo=echo, pool_pre_ping=True, connect_args=POSTGRES_TIMEOUTS, insertmanyvalues_page_size=BULK_ROWS
    )


def _make_sqlite_transactional(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy's BEGIN below be the only one
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _use_wal(cursor: Any) -> None:
    """Switch the file to WAL (readers never block the writer). The mode sticks to the file,
    so only a fresh file needs it; switching takes an exclusive lock that the busy timeout
    does not wait for, and processes starting together on a fresh file race for it."""
    for attempt in range(WAL_ATTEMPTS):
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError:
            if attempt == WAL_ATTEMPTS - 1:
                raise
            time.sleep(WAL_RETRY_S)


def alembic_config(engine: Engine) -> AlembicConfig:
    if not (ALEMBIC_DIR / "env.py").is_file():
        raise RuntimeError(
            f"no migrations at {ALEMBIC_DIR}: run Latigo from a checkout or an editable install (pip install -e .)"
        )
    config = AlembicConfig()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration; safe to run at every start."""
    alembic.command.upgrade(alembic_config(engine), "head")


def dialect_insert(dialect: Dialect, table: Table):
    """The dialect's INSERT, which has ON CONFLICT."""
    if dialect.name == "postgresql":
        return postgresql.insert(table)
    if dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"upserts are not implemented for {dialect.name}")


def _upsert_statement(dialect: Dialect, table: Table, columns: Iterable[str]):
    """INSERT of ``columns`` that replaces the non-key ones where the primary key exists
    (and does nothing where every column is a key)."""
    statement = dialect_insert(dialect, table)
    keys = [column.name for column in table.primary_key.columns]
    updates = {name: statement.excluded[name] for name in columns if name not in keys}
    if not updates:
        return statement.on_conflict_do_nothing(index_elements=keys)
    return statement.on_conflict_do_update(index_elements=keys, set_=updates)


def _chunks(rows: Sequence[Mapping[str, Any]]) -> Iterable[Sequence[Mapping[str, Any]]]:
    for offset in range(0, len(rows), BULK_ROWS):
        yield rows[offset : offset + BULK_ROWS]


def upsert(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> int:
    """Insert rows, replacing the non-key columns of rows whose primary key exists: the
    write that makes redelivered tasks harmless."""
    if not rows:
        return 0
    for chunk in _chunks(rows):
        connection.execute(_upsert_statement(connection.dialect, table, chunk[0]), list(chunk))
    return len(rows)


class PreparedUpsert:
    """An upsert of whole rows of ``table``, compiled by SQLAlchemy once and run as one
    ``executemany`` of the driver.

    For the few hundred rows of a window's predictions SQLAlchemy's per-row parameter work
    (a dict per row, every column's bind processor on every value) cost more than SQLite's own
    work (bench/README.md, "Figures behind the code"). Here the caller binds each distinct
    value once with :meth:`bind` (a window has three times and one project) and hands over
    plain tuples in the table's column order."""

    def __init__(self, engine: Engine, table: Table) -> None:
        dialect = engine.dialect
        self._names = [column.name for column in table.columns]
        compiled = _upsert_statement(dialect, table, self._names).compile(dialect=dialect)
        self._sql = compiled.string
        # positional drivers (SQLite's ?) take tuples, named ones (psycopg's %(name)s) mappings
        self._positional = compiled.positiontup is not None
        if self._positional and list(compiled.positiontup) != self._names:
            raise RuntimeError(f"unexpected parameter order {compiled.positiontup} for {self._names}")
        self._processors = {
            column.name: column.type.dialect_impl(dialect).bind_processor(dialect) for column in table.columns
        }

    def bind(self, column: str, value: Any) -> Any:
        """``value`` as the driver takes it for ``column`` (an aware time as naive UTC, ...)."""
        processor = self._processors[column]
        return value if processor is None or value is None else processor(value)

    def execute(self, connection: Connection, rows: Sequence[tuple[Any, ...]]) -> int:
        if not rows:
            return 0
        parameters = rows if self._positional else [dict(zip(self._names, row)) for row in rows]
        connection.exec_driver_sql(self._sql, parameters)
        return len(rows)


class NewRows:
    """Rows of ``columns`` of ``table`` inserted where their primary key is new (the others
    are left alone), counted, without SQLAlchemy's per-row work: for the ledger's first start
    (441,000 windows at 9,000 models) its parameter processing, the driver's binding and the
    RETURNING rows read back took nearly all of the time (bench/README.md, "A real Gordo
    serving 9,000 models").

    The caller binds each distinct value once with :meth:`bind` (a fleet's windows have a
    few dozen distinct times) and hands over tuples in ``columns``' order, as an iterable
    that is read once, ``NEW_ROWS_CHUNK`` rows at a time. SQLite: an ``executemany`` of
    ``INSERT ... ON CONFLICT DO NOTHING`` per chunk, with the values as SQLAlchemy hands
    them to the driver, so the stored text is the same. PostgreSQL: COPY (text) into a
    temporary table, then one ``INSERT ... SELECT ... ON CONFLICT DO NOTHING`` in key
    order: two writers of overlapping rows take their locks in the same order, so one waits
    for the other instead of deadlocking, and the second inserts what the first did not."""

    def __init__(self, dialect: Dialect, table: Table, columns: Sequence[str]) -> None:
        self._dialect = dialect
        self._columns = list(columns)
        self._processors = {
            name: table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in self._columns
        }
        quote = dialect.identifier_preparer.quote
        names = ", ".join(quote(name) for name in self._columns)
        keys = ", ".join(quote(column.name) for column in table.primary_key.columns)
        target = dialect.identifier_preparer.format_table(table)
        if dialect.name == "sqlite":
            self._insert = f"INSERT INTO {target} ({names}) VALUES ({', '.join('?' * len(self._columns))}) "
            self._insert += f"ON CONFLICT ({keys}) DO NOTHING"
        elif dialect.name == "postgresql":
            staging = quote(f"latigo_new_{table.name}")
            self._statements = (
                f"CREATE TEMPORARY TABLE {staging} AS SELECT {names} FROM {target} WITH NO DATA",
                f"COPY {staging} ({names}) FROM STDIN",
                f"INSERT INTO {target} ({names}) SELECT {names} FROM {staging} ORDER BY {keys} "
                f"ON CONFLICT ({keys}) DO NOTHING",
                f"DROP TABLE {staging}",
            )
        else:
            raise NotImplementedError(f"bulk inserts are not implemented for {dialect.name}")

    def bind(self, column: str, value: Any) -> Any:
        """``value`` as :meth:`execute` takes it for ``column``: as SQLAlchemy hands it to the
        driver (an aware time as naive UTC; on SQLite its fixed-width text), and on
        PostgreSQL that in COPY's text form."""
        processor = self._processors[column]
        if processor is not None and value is not None:
            value = processor(value)
        return _copy_text(value) if self._dialect.name == "postgresql" else value

    def execute(self, connection: Connection, rows: Iterable[tuple[Any, ...]]) -> int:
        """Insert the rows whose key is new, in the connection's transaction; how many were."""
        chunks = _batched(rows, NEW_ROWS_CHUNK)
        if self._dialect.name == "sqlite":
            return sum(connection.exec_driver_sql(self._insert, chunk).rowcount for chunk in chunks)
        create, copy, insert, drop = self._statements
        connection.exec_driver_sql(create)
        self._copy(connection, copy, chunks)
        inserted = connection.exec_driver_sql(insert).rowcount
        connection.exec_driver_sql(drop)
        return inserted

    @staticmethod
    def _copy(connection: Connection, statement: str, chunks: Iterable[list[tuple[str, ...]]]) -> None:
        """COPY the chunks' rows through the driver (SQLAlchemy has no COPY), its errors
        wrapped as SQLAlchemy wraps the others, so that an outage is still one."""
        driver = connection.connection.driver_connection
        assert driver is not None, "a connection in a transaction has its driver's"
        error_class = connection.dialect.loaded_dbapi.Error
        try:
            with driver.cursor() as cursor, cursor.copy(statement) as stream:
                for chunk in chunks:
                    stream.write("".join(["\t".join(row) + "\n" for row in chunk]))
        except error_class as error:
            raise sqlalchemy.exc.DBAPIError.instance(statement, None, error, error_class) from error


def _copy_text(value: Any) -> str:
    """A driver value as a field of PostgreSQL's COPY text format, which PostgreSQL reads
    back as the same value (``\\N`` is NULL; a time's ISO form, offset included if any)."""
    if value is None:
        return "\\N"
    if isinstance(value, str):
        return value.translate(_COPY_ESCAPES)
    if isinstance(value, datetime):
        return value.isoformat(" ")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"no COPY text form for {type(value).__name__} {value!r}")


def _batched(rows: Iterable[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def insert_new(connection: Connection, table: Table, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Insert rows whose primary key is new, ignore the others; return the new keys (for a
    count of many rows, NewRows is many times faster)."""
    keys = [column for column in table.primary_key.columns]
    # one statement executed with many parameter sets, which SQLAlchemy sends as multi-row
    # INSERTs itself ("insertmanyvalues"): compiling one statement with thousands of VALUES
    # tuples cost more than the insert
    statement = (
        dialect_insert(connection.dialect, table)
        .on_conflict_do_nothing(index_elements=[key.name for key in keys])
        .returning(*keys)
    )
    inserted: list[Any] = []
    for chunk in _chunks(rows):
        inserted.extend(connection.execute(statement, list(chunk)).all())
    return inserted


def translate_outage(what: str) -> AbstractContextManager[None]:
    """A database that cannot be reached is ``what`` being unavailable (latigo.outages
    probes it), not a crash."""
    return translated(DATABASE_ERRORS, what)


def first_line(error: BaseException) -> str:
    """The first line (at most 300 characters) of the driver's own message under a database
    error, for a one-line log; "" when it says nothing."""
    lines = str(getattr(error, "orig", None) or error).strip().splitlines()
    return lines[0][:300] if lines else ""


def probe(engine: Engine) -> None:
    """Raise unless the database answers now."""
    with engine.connect() as connection:
        connection.exec_driver_sql("SELECT 1")
