"""Contiguous runs of model input, and what each window of a task gets from them (no I/O).

A windowed model (an LSTM with offset k) reads the rows it is sent as consecutive: rows on
both sides of a data gap, sent in one request, are predicted as if the gap were not there,
and the answer then depends on how windows were grouped into tasks. So the model input is
cut into runs at every missing resolution step, and each run is a Gordo call of its own.
The first rows of a run only feed the lookback (``ModelMetadata.lookback``: the offset, or
one less than the fewest rows Gordo accepts if that is more), and a run with no more rows
than that is not sent at all (Gordo answers it with a 500, which is no one's fault and no
reason to retry). The continuous case, one run, stays one call.

A row is stored only when the rows before it in its run would make a call of their own
(Gordo predicts an LSTM autoencoder's 6th row only in a call of at least 7): whether a row
is predicted must not depend on whether later rows happened to be in the same task.

The same arithmetic then tells, for every window of the task, how many of its rows could
be predicted and why the others could not, so the ledger's outcome of each window is true.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum

import numpy as np

from latigo.window import Window

# nanoseconds in a second, for the time formats below
_NS = 1_000_000_000


@dataclass(frozen=True)
class Runs:
    """A model input cut at its gaps: ``calls`` are the runs worth a Gordo call, ``short``
    those with no row beyond the lookback; both as slices of the input's rows."""

    calls: list[slice]
    short: list[slice]


def split(times_ns: np.ndarray, step_ns: int) -> list[slice]:
    """The runs of sorted, distinct row times: consecutive rows exactly one step apart."""
    if len(times_ns) == 0:
        return []
    breaks = np.flatnonzero(np.diff(times_ns) != step_ns) + 1
    edges = [0, *breaks.tolist(), len(times_ns)]
    return [slice(start, stop) for start, stop in itertools.pairwise(edges)]


def plan(times_ns: np.ndarray, step_ns: int, lookback: int, span: Window) -> Runs:
    """Which runs of the input to send to Gordo for predictions inside ``span``: those with
    more than ``lookback`` rows whose predicted rows (all but the first ``lookback``) reach
    into the span. Runs that would predict only rows before the span are not sent."""
    inside = np.searchsorted(times_ns, [_ns(span.start), _ns(span.end)])  # the rows in the span
    calls, short = [], []
    for run in split(times_ns, step_ns):
        if run.stop - run.start <= lookback:
            short.append(run)
        elif max(run.start + lookback, inside[0]) < min(run.stop, inside[1]):
            calls.append(run)
    return Runs(calls, short)


def predicted(times_ns: np.ndarray, run: slice, lookback: int) -> int:
    """The first time of ``run`` whose prediction may be stored."""
    return int(times_ns[run.start + lookback])


class Why(IntEnum):
    """Why an expected row of a window was or was not stored."""

    STORED = 0
    NO_DATA = 1  # no complete sensor data for the row's resolution step
    LOOKBACK = 2  # among the first ``lookback`` rows of its run: it follows a gap
    UNANSWERED = 3  # sent, but Gordo gave no prediction for it


@dataclass(frozen=True)
class WindowRows:
    """A window's rows: how many were expected (one per resolution step), how many are
    stored, and, when some are missing, the reasons."""

    window: Window
    stored: int
    expected: int
    note: str | None

    @property
    def empty(self) -> bool:
        return self.stored == 0


def account(
    windows: list[Window],
    step_ns: int,
    input_ns: np.ndarray,
    stored_ns: np.ndarray,
    lookback: int,
) -> list[WindowRows]:
    """Each window's rows: ``input_ns`` are the times of the model input (sorted, distinct,
    complete rows only), ``stored_ns`` those of the predictions stored for the task."""
    if not windows:
        return []
    first = -(-_ns(windows[0].start) // step_ns) * step_ns  # the first resolution step in the span
    grid = np.arange(first, _ns(windows[-1].end), step_ns, dtype=np.int64)
    why = np.full(len(grid), Why.NO_DATA, dtype=np.int8)
    present = np.isin(grid, input_ns)
    if present.any():
        positions = _run_positions(input_ns, step_ns)[np.searchsorted(input_ns, grid[present])]
        why[present] = np.where(positions < lookback, Why.LOOKBACK, Why.UNANSWERED)
    why[np.isin(grid, stored_ns)] = Why.STORED
    results = []
    for window in windows:
        begin, stop = np.searchsorted(grid, [_ns(window.start), _ns(window.end)])
        reasons = why[begin:stop]
        stored = int(np.count_nonzero(reasons == Why.STORED))
        expected = int(stop - begin)
        note = None
        if stored < expected:
            fmt = _time_format(window, step_ns)
            causes = _causes(grid[begin:stop], reasons, lookback, fmt)
            note = f"{stored} of {expected} rows: {'; '.join(causes)}"
        results.append(WindowRows(window, stored, expected, note))
    return results


def _run_positions(times_ns: np.ndarray, step_ns: int) -> np.ndarray:
    """Each row's position in its run."""
    positions = np.empty(len(times_ns), dtype=np.int64)
    for run in split(times_ns, step_ns):
        positions[run] = np.arange(run.stop - run.start)
    return positions


def _causes(times: np.ndarray, reasons: np.ndarray, lookback: int, fmt: str) -> list[str]:
    """The reasons for a window's missing rows, consecutive rows of one reason together."""
    causes = []
    position = 0
    while position < len(times):
        end = position
        while end + 1 < len(times) and reasons[end + 1] == reasons[position]:
            end += 1
        if reasons[position] != Why.STORED:
            causes.append(_cause(Why(reasons[position]), times[position], times[end], end > position, lookback, fmt))
        position = end + 1
    return causes


def _cause(why: Why, first: int, last: int, several: bool, lookback: int, fmt: str) -> str:
    when = _when(first, fmt) + (f"–{_when(last, fmt)}" if several else "")
    if why == Why.NO_DATA:
        return f"no complete sensor data at {when}"
    if why == Why.LOOKBACK:
        return f"{when} follow{'' if several else 's'} a gap; the model needs {lookback} earlier rows"
    return f"Gordo answered no row for {when}"


def _time_format(window: Window, step_ns: int) -> str:
    """Times as short as they can be in a note about ``window``: hours and minutes within a
    day, the date too for longer windows, seconds for resolutions finer than a minute."""
    clock = "%H:%M" if step_ns % (60 * _NS) == 0 else "%H:%M:%S"
    one_day = (
        window.end - window.start <= timedelta(days=1)
        and window.start.date() == (window.end - timedelta(microseconds=1)).date()
    )
    return clock if one_day else f"%Y-%m-%d {clock}"


def _when(ns: int, fmt: str) -> str:
    return datetime.fromtimestamp(ns / _NS, tz=UTC).strftime(fmt)


def _ns(moment: datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime, exactly."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000
