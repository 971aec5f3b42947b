"""Where a benchmark's database time goes: the Latigo functions that ran SQL during a run,
the time each took with its fetches and its own Python (cProfile's cumulative time), the
statements each ran, and the database's plan for them.

A figure that grows with history is explained by the statements that grow with it and by
their plans (a scan where a seek was meant, a sort of every row). A statement's own time,
from SQLAlchemy's cursor events, is not enough: SQLite computes a streamed result (a
GROUP BY walking an index) while it is fetched, after the cursor's ``execute`` returned,
so the issuing function's cumulative time is the figure's share. Listening on the
``Engine`` class catches the engines a command builds for itself, as ``latigo status``
does; nothing in Latigo changes.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from sqlalchemy import Engine, event

# functions shown per profiled run, and the least share of the run they must take
SHOWN, LEAST_SHARE = 3, 0.05
# statements whose plans are asked for (the others have none worth reading)
EXPLAINED = ("SELECT", "WITH", "UPDATE", "DELETE")
# the Latigo module that only runs statements others build: the issuer is its caller
RUNNER = "latigo.db"
# a function as cProfile names it: file, first line, name
Key = tuple[str, int, str]


@dataclass
class Statement:
    """One SQL text's executions during a profiled run."""

    seconds: float = 0.0  # in the cursor's execute: without the fetch
    executions: int = 0
    parameters: Any = None  # of its slowest execution, as the driver had them
    slowest: float = 0.0
    plan: str = ""  # asked for by ``explain``


@dataclass
class Issuer:
    """A Latigo function that ran SQL, and what it ran."""

    name: str
    seconds: float  # cumulative, under cProfile
    statements: dict[str, Statement] = field(default_factory=dict)


@dataclass
class Recording:
    """One profiled run: its time under the profiler, and its issuers, slowest first."""

    seconds: float = 0.0
    issuers: list[Issuer] = field(default_factory=list)

    def top(self) -> list[Issuer]:
        """The SHOWN issuers that took most of the run, each at least LEAST_SHARE of it."""
        return [issuer for issuer in self.issuers[:SHOWN] if issuer.seconds >= LEAST_SHARE * self.seconds]


class Profiler:
    """Times every statement of every engine, and every function, while ``recording``."""

    def __init__(self) -> None:
        self._active = False
        self._statements: dict[Key, dict[str, Statement]] = defaultdict(lambda: defaultdict(Statement))
        self._names: dict[Key, str] = {}
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)

    def _before(self, connection, cursor, sql, parameters, context, executemany) -> None:
        if self._active:
            connection.info.setdefault("bench_started", []).append(time.perf_counter())

    def _after(self, connection, cursor, sql, parameters, context, executemany) -> None:
        if not self._active or not connection.info.get("bench_started"):
            return
        elapsed = time.perf_counter() - connection.info["bench_started"].pop()
        key, name = _issuer()
        self._names[key] = name
        entry = self._statements[key][sql]
        entry.seconds += elapsed
        entry.executions += 1
        if elapsed >= entry.slowest:
            entry.slowest = elapsed
            # one set of an executemany (insertmanyvalues hands over its batch's flat set)
            many = executemany and isinstance(parameters, list) and parameters
            entry.parameters = parameters[0] if many else parameters

    @contextlib.contextmanager
    def recording(self) -> Iterator[Recording]:
        """Profile the block; the recording is filled in when it ends."""
        self._statements.clear()
        recording = Recording()
        profile = cProfile.Profile()
        self._active = True
        started = time.perf_counter()
        profile.enable()
        try:
            yield recording
        finally:
            profile.disable()
            recording.seconds = time.perf_counter() - started
            self._active = False
        cumulative = {key: row[3] for key, row in pstats.Stats(profile).stats.items()}  # type: ignore[attr-defined]
        recording.issuers = sorted(
            (
                Issuer(self._names[key], cumulative.get(key, 0.0), dict(statements))
                for key, statements in self._statements.items()
            ),
            key=lambda issuer: -issuer.seconds,
        )


def _issuer() -> tuple[Key, str]:
    """The innermost Latigo function on the stack outside RUNNER, the code that asked for
    the statement ("bench" for the benchmark's own), as cProfile names it and as printed."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module.startswith("latigo.") and module != RUNNER:
            code = frame.f_code
            return (code.co_filename, code.co_firstlineno, code.co_name), f"{module}.{code.co_qualname}"
        frame = frame.f_back
    return ("bench", 0, "bench"), "bench"


def explain(engine: Engine, recording: Recording) -> None:
    """Ask the database for the plans of the shown issuers' statements, while it still
    holds the data they ran on."""
    for issuer in recording.top():
        for sql, entry in issuer.statements.items():
            if sql.lstrip().upper().startswith(EXPLAINED):
                entry.plan = plan_of(engine, sql, entry.parameters)


def plan_of(engine: Engine, sql: str, parameters: Any) -> str:
    """The database's plan of a statement, on one line: SQLite's ``EXPLAIN QUERY PLAN``,
    PostgreSQL's ``EXPLAIN`` (which runs nothing). Through the driver's own cursor, with the
    parameters as the driver had them."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        cursor = connection.connection.cursor()
        cursor.execute(f"{'EXPLAIN QUERY PLAN' if sqlite else 'EXPLAIN'} {sql}", parameters or (() if sqlite else None))
        rows = cursor.fetchall()
        cursor.close()
        connection.rollback()
    if sqlite:
        return " / ".join(row[-1] for row in rows)
    # the plan's nodes (the first line and the "->" ones), without their costs and conditions
    nodes = [line for number, (line,) in enumerate(rows) if number == 0 or line.lstrip().startswith("->")]
    return " / ".join(node.strip().removeprefix("-> ").split("  (cost")[0] for node in nodes)


def report(recording: Recording) -> list[str]:
    """The shown issuers as lines: cumulative time, then each statement's executions,
    cursor time, SQL and plan."""
    lines = []
    for issuer in recording.top():
        lines.append(f"  {issuer.seconds * 1000:10,.1f} ms  {issuer.name}")
        for sql, entry in sorted(issuer.statements.items(), key=lambda item: -item[1].seconds):
            if sql.lstrip().upper().startswith(("BEGIN", "COMMIT", "ROLLBACK")):
                continue
            text = " ".join(sql.split())
            text = text if len(text) <= 150 else f"{text[:150]}…"
            lines.append(f"      x{entry.executions}, {entry.seconds * 1000:,.1f} ms in execute: {text}")
            if entry.plan:
                lines.append(f"        plan: {entry.plan}")
    return lines
