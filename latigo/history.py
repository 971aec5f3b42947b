"""The ledger's history: old finished windows kept as runs, so the hot ledger stays bounded.

A year of one row per model and window is 17.5 M rows at 1,000 models, and every query of
the tick, ``latigo status`` and the page grew with it. Yet an old ``done`` or ``no_data``
window is never asked about one by one: it is counted, and it must never be planned again.
Nor is an old ``dead`` one: its error is kept by its dead letter, and ``backfill --mode
failed`` or ``dlq replay`` bring it back. So windows in those states (``states.COMPACTED``)
that ended before ``retention.compact_after`` move, per model, into
``ledger_history`` as runs: consecutive windows of one length with the same state,
partialness and revision, one row each (a year of a healthy model is one row).

Every reader sees them: ``Ledger.plan`` skips a window a run covers (planned at most once,
ever), ``Ledger.states`` and ``watermarks_of`` expand and consult runs, the read model adds
them to its counts, and ``restore`` moves a range back into the ledger when a backfill or a
replayed dead letter runs it again. What a run forgets is each window's note, error, stored
rows and timestamps: history older than ``compact_after`` keeps its state and whether it
was partial.
The status page's longest view (7 days) is always inside the hot ledger.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    String,
    and_,
    bindparam,
    case,
    column,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
    values,
)

from latigo import db
from latigo.schema import UTCDateTime, ledger, ledger_history, ledger_history_totals
from latigo.states import COMPACTED, State, partial

# ledger rows read, grouped and moved per transaction: one compaction step's bounded work
COMPACT_BATCH = 20_000
# models per history query that names its models (bound parameters well under SQLite's limit)
MODELS_PER_QUERY = 500


@dataclass(frozen=True)
class Run:
    """Consecutive windows of one model, ``step`` long each, starting at ``start``."""

    project: str
    model: str
    revision: str | None
    state: State
    partial: bool
    start: datetime
    windows: int
    step: timedelta

    @property
    def end(self) -> datetime:
        return self.start + self.windows * self.step

    @property
    def last_start(self) -> datetime:
        return self.end - self.step

    def starts(self, start: datetime | None = None, end: datetime | None = None) -> Iterator[datetime]:
        """The run's window starts inside ``[start, end)``."""
        first, stop = self._span(start, end)
        return (self.start + k * self.step for k in range(first, stop))

    def count(self, start: datetime | None = None, end: datetime | None = None) -> int:
        """How many of its windows start inside ``[start, end)``."""
        first, stop = self._span(start, end)
        return max(0, stop - first)

    def _span(self, start: datetime | None, end: datetime | None) -> tuple[int, int]:
        first = 0 if start is None or start <= self.start else -((self.start - start) // self.step)
        stop = self.windows if end is None or end >= self.end else -((self.start - end) // self.step)
        return max(0, first), min(self.windows, max(0, stop))

    def follows(self, other: Run) -> bool:
        """Whether this run continues ``other`` as one run."""
        return (self.project, self.model, self.revision, self.state, self.partial, self.step) == (
            other.project,
            other.model,
            other.revision,
            other.state,
            other.partial,
            other.step,
        ) and self.start == other.end


def runs_of(rows: Iterable[tuple]) -> list[Run]:
    """Group ledger rows ``(project, model, start, end, state, revision, partial)``, sorted by
    model and start, into runs: a new run wherever the model, state, partialness, revision
    or window length changes, or a window is missing."""
    found: list[Run] = []
    for project, model, start, end, state, revision, is_partial in rows:
        window = Run(project, model, revision, State(state), bool(is_partial), start, 1, end - start)
        if found and window.follows(found[-1]):
            found[-1] = replace(found[-1], windows=found[-1].windows + 1)
        else:
            found.append(window)
    return found


def _run(row) -> Run:
    step = (row.run_end - row.run_start) / row.windows
    return Run(
        row.project, row.model, row.revision, State(row.state), bool(row.partial), row.run_start, row.windows, step
    )


def runs(
    connection: Connection,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    models: Sequence[tuple[str, str]] | None = None,
    project: str | None = None,
) -> list[Run]:
    """The runs with a window starting in ``[start, end)``, of the given models or project."""
    query = select(ledger_history)
    if start is not None:
        query = query.where(ledger_history.c.run_end > start)
    if end is not None:
        query = query.where(ledger_history.c.run_start < end)
    if project is not None:
        query = query.where(ledger_history.c.project == project)
    if models is None:
        return [run for row in connection.execute(query) if (run := _run(row)).count(start, end)]
    found: list[Run] = []
    for offset in range(0, len(models), MODELS_PER_QUERY):
        batch = list(models[offset : offset + MODELS_PER_QUERY])
        named = query.where(tuple_(ledger_history.c.project, ledger_history.c.model).in_(batch))
        found += [run for row in connection.execute(named) if (run := _run(row)).count(start, end)]
    return found


@dataclass(frozen=True)
class Totals:
    """Windows of one model, counted: what the read model adds to the hot ledger's tally."""

    states: dict[State, int]
    partial: int
    newest_done: datetime | None
    first_start: datetime
    last_start: datetime
    windows: int

    def __add__(self, other: Totals) -> Totals:
        """Both counted together (the one merge of history and of history with the ledger)."""
        states = dict(self.states)
        for state, count in other.states.items():
            states[state] = states.get(state, 0) + count
        return Totals(
            states,
            self.partial + other.partial,
            max((end for end in (self.newest_done, other.newest_done) if end is not None), default=None),
            min(self.first_start, other.first_start),
            max(self.last_start, other.last_start),
            self.windows + other.windows,
        )


def totals(
    engine: Engine,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    models: Sequence[tuple[str, str]] | None = None,
    project: str | None = None,
) -> dict[tuple[str, str], Totals]:
    """Per model, its runs' windows starting in ``[start, end)``, counted.

    The runs wholly inside the range are summed by the database: a year of a fleet whose
    partial and dead windows are scattered is hundreds of thousands of runs, which took
    ``latigo status`` 13 s to read one by one. Only the at most two runs a model has across
    the range's ends, and each model's newest run (for its last window's start, which
    needs the run's step), are read here. A whole history is read from
    ``ledger_history_totals``, a row or four per model."""
    if start is None and end is None:
        return _whole(engine, models, project)
    overlapping = [ledger_history.c.run_end > start] if start is not None else []
    if end is not None:
        overlapping.append(ledger_history.c.run_start < end)
    across = []  # of those, the runs that reach past the range's start or end
    if start is not None:
        across.append(ledger_history.c.run_start < start)
    if end is not None:
        across.append(ledger_history.c.run_end > end)
    if project is not None:
        overlapping.append(ledger_history.c.project == project)
    key = ledger_history.c.project, ledger_history.c.model
    sums = select(
        *key,
        ledger_history.c.state,
        ledger_history.c.partial,
        func.sum(ledger_history.c.windows),
        func.min(ledger_history.c.run_start),
        func.max(ledger_history.c.run_start),
        func.max(ledger_history.c.run_end),
    ).group_by(*key, ledger_history.c.state, ledger_history.c.partial)
    if across:
        sums = sums.where(~or_(*across))
    edges = select(ledger_history).where(or_(*across)) if across else None
    per_model: dict[tuple[str, str], Totals] = {}
    newest: dict[tuple[str, str], datetime] = {}  # each model's newest summed run's start
    with engine.connect() as connection:
        for batch in _batches(models):
            named = [tuple_(*key).in_(batch)] if batch is not None else []
            for project_, model, state, is_partial, windows, first, last, last_end in connection.execute(
                sums.where(*overlapping, *named)
            ):
                state = State(state)
                done_end = last_end if state == State.DONE else None
                # last_start stands in for now: the newest run's own last window is read below
                counted = Totals({state: windows}, windows if is_partial else 0, done_end, first, last, windows)
                _add(per_model, (project_, model), counted)
                newest[(project_, model)] = max(newest.get((project_, model), last), last)
            if edges is not None:
                for row in connection.execute(edges.where(*overlapping, *named)):
                    _add_run(per_model, _run(row), start, end)
        lasts = list(newest.items())
        for offset in range(0, len(lasts), MODELS_PER_QUERY):
            starts = [
                (project_, model, first) for (project_, model), first in lasts[offset : offset + MODELS_PER_QUERY]
            ]
            for row in connection.execute(_runs_at(ledger_history.c.run_start, starts)):
                run = _run(row)
                counted = per_model[(run.project, run.model)]
                per_model[(run.project, run.model)] = replace(
                    counted, last_start=max(run.last_start, counted.last_start)
                )
    return per_model


def _whole(
    engine: Engine, models: Sequence[tuple[str, str]] | None, project: str | None
) -> dict[tuple[str, str], Totals]:
    """Per model, its whole history counted, from its totals."""
    key = ledger_history_totals.c.project, ledger_history_totals.c.model
    query = select(ledger_history_totals)
    if project is not None:
        query = query.where(ledger_history_totals.c.project == project)
    per_model: dict[tuple[str, str], Totals] = {}
    with engine.connect() as connection:
        for batch in _batches(models):
            named = query.where(tuple_(*key).in_(batch)) if batch is not None else query
            for row in connection.execute(named):
                state = State(row.state)
                done_end = row.last_end if state == State.DONE else None
                counted = Totals(
                    {state: row.windows},
                    row.windows if row.partial else 0,
                    done_end,
                    row.first_start,
                    row.last_start,
                    row.windows,
                )
                _add(per_model, (row.project, row.model), counted)
    return per_model


def _batches(models: Sequence[tuple[str, str]] | None) -> Iterator[list[tuple[str, str]] | None]:
    """The models to name in a query, MODELS_PER_QUERY at a time; all at once (None) when
    none are named."""
    if models is None:
        yield None
        return
    for offset in range(0, len(models), MODELS_PER_QUERY):
        yield list(models[offset : offset + MODELS_PER_QUERY])


def _add(per_model: dict[tuple[str, str], Totals], key: tuple[str, str], counted: Totals) -> None:
    known = per_model.get(key)
    per_model[key] = counted if known is None else known + counted


def _add_run(per_model: dict[tuple[str, str], Totals], run: Run, start: datetime | None, end: datetime | None) -> None:
    """A run across the range's start or end, counted for its windows inside the range."""
    count = run.count(start, end)
    if not count:
        return
    first = next(run.starts(start, end))
    last = first + (count - 1) * run.step
    done_end = last + run.step if run.state == State.DONE else None
    _add(
        per_model,
        (run.project, run.model),
        Totals({run.state: count}, count if run.partial else 0, done_end, first, last, count),
    )


def covered(connection: Connection, models: Sequence[tuple[str, str]], start: datetime, end: datetime) -> set:
    """The ``(project, model, window start)`` of the given models' windows in ``[start, end)``
    that runs hold: windows that must not be planned again."""
    if (
        connection.execute(select(ledger_history.c.project).where(ledger_history.c.run_end > start).limit(1)).first()
        is None
    ):
        return set()  # the scheduler's tick: every window it plans is newer than all history
    return {
        (run.project, run.model, window_start)
        for run in runs(connection, start=start, end=end, models=models)
        for window_start in run.starts(start, end)
    }


def newest_starts(connection: Connection, models: Sequence[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
    """The newest window start in history of each given model that has history."""
    found: dict[tuple[str, str], datetime] = {}
    if connection.execute(select(ledger_history.c.project).limit(1)).first() is None:
        return found  # a first start: thousands of new models, and no history to ask
    for run in runs(connection, models=models):
        key = (run.project, run.model)
        found[key] = max(found.get(key, run.last_start), run.last_start)
    return found


def _row(run: Run) -> dict:
    return {
        "project": run.project,
        "model": run.model,
        "run_start": run.start,
        "run_end": run.end,
        "windows": run.windows,
        "state": run.state.value,
        "partial": int(run.partial),
        "revision": run.revision,
    }


def candidates(before: datetime, limit: int = COMPACT_BATCH) -> Select:
    """The oldest ``limit`` finished windows (``COMPACTED``) that ended by ``before``, ordered
    as ``runs_of`` groups them: a range of the old rows of ix_ledger_state_window_end
    (through ix_ledger_state, the scan read and sorted the whole hot ledger every tick)."""
    return (
        select(
            ledger.c.project,
            ledger.c.model,
            ledger.c.window_start,
            ledger.c.window_end,
            ledger.c.state,
            ledger.c.revision,
            partial(),
        )
        .where(ledger.c.state.in_(COMPACTED), ledger.c.window_end <= before)
        .order_by(ledger.c.project, ledger.c.model, ledger.c.window_start)
        .limit(limit)
    )


def compactable(engine: Engine, before: datetime) -> bool:
    """Whether a finished window ended by ``before``: a seek of the candidates' index."""
    with engine.connect() as connection:
        return connection.execute(candidates(before, limit=1)).first() is not None


def compact(engine: Engine, before: datetime, limit: int = COMPACT_BATCH) -> int:
    """Move up to ``limit`` finished windows (``COMPACTED``) that ended by ``before`` into
    runs, in one transaction; returns how many moved (fewer than ``limit``: nothing older
    is left).

    A batch is a few statements whatever its runs: the leader compacts a quarter day of
    every model at once (``scheduler.COMPACT_SLACK``), and a statement per model would make
    the tick of a fleet with history slower than one without."""
    # PostgreSQL: a window being re-planned meanwhile is not moved under it
    query = candidates(before, limit).with_for_update()
    with engine.begin() as connection:
        found = runs_of(connection.execute(query))
        if not found:
            return 0
        _move(connection, found)
    return sum(run.windows for run in found)


# one run's windows in the ledger, for an executemany of its range
_IN_RUN = and_(
    ledger.c.project == bindparam("p"),
    ledger.c.model == bindparam("m"),
    ledger.c.window_start >= bindparam("s"),
    ledger.c.window_start < bindparam("e"),
)


def _move(connection: Connection, found: Sequence[Run]) -> None:
    """Delete the runs' windows from the ledger; extend the history run each continues, or
    add it as a new one (``found`` as ``runs_of`` groups them: at most one run a model
    continues, its first)."""
    connection.execute(
        delete(ledger).where(_IN_RUN),
        [{"p": run.project, "m": run.model, "s": run.start, "e": run.end} for run in found],
    )
    previous: dict[tuple[str, str, datetime], Run] = {}
    for offset in range(0, len(found), MODELS_PER_QUERY):
        ends = [(run.project, run.model, run.start) for run in found[offset : offset + MODELS_PER_QUERY]]
        for row in connection.execute(_runs_at(ledger_history.c.run_end, ends)):
            previous[(row.project, row.model, row.run_end)] = _run(row)
    extended, added = [], []
    for run in found:
        before = previous.get((run.project, run.model, run.start))
        if before is not None and run.follows(before):
            extended.append(
                {"p": run.project, "m": run.model, "s": before.start, "e": run.end, "w": before.windows + run.windows}
            )
        else:
            added.append(_row(run))
    if extended:
        connection.execute(
            update(ledger_history)
            .where(
                ledger_history.c.project == bindparam("p"),
                ledger_history.c.model == bindparam("m"),
                ledger_history.c.run_start == bindparam("s"),
            )
            .values(run_end=bindparam("e"), windows=bindparam("w")),
            extended,
        )
    if added:
        connection.execute(insert(ledger_history), added)
    _count_in(connection, found)


def _runs_at(moment: ColumnElement, keys: Sequence[tuple[str, str, datetime]]) -> Select:
    """The runs of the given ``(project, model, moment)``, ``moment`` their start or end:
    a join to the keys as a VALUES list, one index seek each (a row-value IN list was a
    scan of the whole history on SQLite)."""
    wanted = (
        values(column("project", String), column("model", String), column("moment", UTCDateTime()), name="wanted")
        .data(list(keys))
        .cte("wanted")
    )
    return select(ledger_history).join(
        wanted,
        and_(
            ledger_history.c.project == wanted.c.project,
            ledger_history.c.model == wanted.c.model,
            moment == wanted.c.moment,
        ),
    )


# what ``sums`` gives: per (project, model, state, partial), the windows, the first
# window's start, the last window's start and end
Sums = dict[tuple[str, str, State, bool], tuple[int, datetime, datetime, datetime]]


def sums(found: Iterable[Run]) -> Sums:
    """Runs summed per model, state and partialness: windows, first window's start, last
    window's start and end (the rows of ``ledger_history_totals``)."""
    summed: Sums = {}
    for run in found:
        key = (run.project, run.model, run.state, run.partial)
        known = summed.get(key)
        if known is None:
            summed[key] = (run.windows, run.start, run.last_start, run.end)
        else:
            windows, first, last, end = known
            summed[key] = (windows + run.windows, min(first, run.start), max(last, run.last_start), max(end, run.end))
    return summed


def totals_rows(summed: Sums) -> list[dict]:
    """Summed runs as ``ledger_history_totals`` rows."""
    return [
        {"project": project, "model": model, "state": state.value, "partial": int(is_partial), "windows": windows,
         "first_start": first, "last_start": last, "last_end": end}
        for (project, model, state, is_partial), (windows, first, last, end) in summed.items()
    ]  # fmt: skip


def _count_in(connection: Connection, found: Sequence[Run]) -> None:
    """Add newly compacted runs to their models' totals, in the compaction's transaction."""
    totals_ = ledger_history_totals.c
    statement = db.dialect_insert(connection.dialect, ledger_history_totals)
    new = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[column.name for column in ledger_history_totals.primary_key.columns],
        set_={
            "windows": totals_.windows + new.windows,
            "first_start": case((new.first_start < totals_.first_start, new.first_start), else_=totals_.first_start),
            "last_start": case((new.last_start > totals_.last_start, new.last_start), else_=totals_.last_start),
            "last_end": case((new.last_end > totals_.last_end, new.last_end), else_=totals_.last_end),
        },
    )
    connection.execute(statement, totals_rows(sums(found)))


def _recount(connection: Connection, project: str, model: str) -> None:
    """One model's totals summed again from its runs (after ``restore`` cut some)."""
    mine = and_(ledger_history_totals.c.project == project, ledger_history_totals.c.model == model)
    connection.execute(delete(ledger_history_totals).where(mine))
    rows = totals_rows(sums(runs(connection, models=[(project, model)])))
    if rows:
        connection.execute(insert(ledger_history_totals), rows)


def restore(
    connection: Connection,
    project: str,
    model: str,
    start: datetime,
    end: datetime,
    now: datetime,
    states: Collection[State] = COMPACTED,
) -> int:
    """Move one model's history windows starting in ``[start, end)`` and in one of ``states``
    back into the ledger, as they were (state, revision, partial unknown: no row counts), so
    they can be planned again; runs are cut around the range. Returns how many windows came
    back."""
    restored, cut = 0, False
    for run in runs(connection, start=start, end=end, models=[(project, model)]):
        if run.state not in states:
            continue
        cut = True
        key = and_(
            ledger_history.c.project == project,
            ledger_history.c.model == model,
            ledger_history.c.run_start == run.start,
        )
        connection.execute(delete(ledger_history).where(key))
        inside = list(run.starts(start, end))
        before = run.count(None, inside[0])
        after = run.windows - before - len(inside)
        if before:
            connection.execute(insert(ledger_history).values(_row(replace(run, windows=before))))
        if after:
            rest = replace(run, start=inside[-1] + run.step, windows=after)
            connection.execute(insert(ledger_history).values(_row(rest)))
        rows = [
            {
                "project": project,
                "model": model,
                "window_start": window_start,
                "window_end": window_start + run.step,
                "state": run.state,
                "revision": run.revision,
                "attempts": 0,
                "note": "restored from the ledger's history (compacted)",
                "created_at": now,
                "updated_at": now,
            }
            for window_start in inside
        ]
        restored += len(db.insert_new(connection, ledger, rows))
    if cut:
        _recount(connection, project, model)
    return restored


def known(connection: Connection, project: str, model: str) -> bool:
    """Whether the model has any window in history."""
    query = select(ledger_history.c.run_start).where(
        ledger_history.c.project == project, ledger_history.c.model == model
    )
    return connection.execute(query.limit(1)).first() is not None
