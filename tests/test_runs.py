"""Cutting model input into contiguous runs, and each window's rows and note (pure, no I/O)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from latigo import runs
from latigo.window import Window

UTC = timezone.utc
STEP = 600 * 10**9  # 10 minutes in nanoseconds
T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
T0_NS = int(T0.timestamp()) * 10**9


def at(*steps: int) -> np.ndarray:
    """Times ``steps`` resolution steps after T0."""
    return np.array([T0_NS + step * STEP for step in steps], dtype=np.int64)


def window(first_step: int, steps: int = 3) -> Window:
    return Window(T0 + timedelta(minutes=10 * first_step), T0 + timedelta(minutes=10 * (first_step + steps)))


# sorted distinct steps: gaps of every length, anywhere
step_sets = st.lists(st.integers(0, 300), max_size=120, unique=True).map(sorted)


@settings(max_examples=300, deadline=None)
@given(step_sets)
def test_no_run_crosses_a_gap_and_every_row_is_in_exactly_one_run(steps):
    times = at(*steps)
    found = runs.split(times, STEP)
    covered = [position for run in found for position in range(run.start, run.stop)]
    assert covered == list(range(len(times)))  # every row once, in order
    for run in found:
        assert (np.diff(times[run]) == STEP).all()  # consecutive inside a run
    for before, after in zip(found, found[1:]):
        assert times[after.start] - times[before.stop - 1] > STEP  # a gap between runs


@settings(max_examples=300, deadline=None)
@given(step_sets, st.integers(0, 8), st.integers(0, 280), st.integers(1, 40))
def test_runs_too_short_for_the_lookback_are_reported_and_never_sent(steps, lookback, span_start, span_steps):
    times = at(*steps)
    span = window(span_start, span_steps)
    planned = runs.plan(times, STEP, lookback, span)
    everything = runs.split(times, STEP)
    assert planned.short == [run for run in everything if run.stop - run.start <= lookback]
    assert all(run.stop - run.start > lookback for run in planned.calls)
    start_ns, end_ns = (T0_NS + step * STEP for step in (span_start, span_start + span_steps))
    # a long run is sent exactly when one of its predicted rows lies in the span
    for run in everything:
        if run.stop - run.start > lookback:
            predicted = times[run.start + lookback : run.stop]
            wanted = bool(((predicted >= start_ns) & (predicted < end_ns)).any())
            assert (run in planned.calls) == wanted


def test_continuous_data_is_one_call():
    planned = runs.plan(at(*range(0, 20)), STEP, 6, window(8))
    assert planned.calls == [slice(0, 20)] and planned.short == []


def test_a_window_after_a_gap_gets_its_rows_and_a_note_saying_why_one_is_missing():
    # data 09:00..10:10, a gap 10:20..10:50 (4 steps), data again from 11:00; lookback 5
    steps = [*range(-6, 2), *range(6, 30)]
    times = at(*steps)
    # predicted: each run from its 6th row on
    stored = np.concatenate([at(*range(-1, 2)), at(*range(11, 30))])
    windows = [window(0), window(3), window(6), window(9), window(12)]
    rows = runs.account(windows, STEP, times, stored, lookback=5)
    assert [(r.stored, r.expected) for r in rows] == [(2, 3), (0, 3), (0, 3), (1, 3), (3, 3)]
    assert rows[0].note == "2 of 3 rows: no complete sensor data at 10:20"
    assert rows[1].note == "0 of 3 rows: no complete sensor data at 10:30–10:50"
    assert rows[2].note == "0 of 3 rows: 11:00–11:20 follow a gap; the model needs 5 earlier rows"
    assert rows[3].note == "1 of 3 rows: 11:30–11:40 follow a gap; the model needs 5 earlier rows"
    assert rows[4].note is None


def test_the_note_names_each_reason_of_a_partial_window():
    times = at(0, 1, 2, 3, 4, 5, 6, 8)  # 10:00-11:00 and a lone row at 11:20
    stored = at(5, 6)
    [rows] = runs.account([window(5, 4)], STEP, times, stored, lookback=5)
    assert (rows.stored, rows.expected) == (2, 4)
    assert rows.note == (
        "2 of 4 rows: no complete sensor data at 11:10; 11:20 follows a gap; the model needs 5 earlier rows"
    )


def test_a_row_gordo_did_not_answer_is_named():
    [rows] = runs.account([window(0)], STEP, at(0, 1, 2), at(0, 2), lookback=0)
    assert rows.note == "2 of 3 rows: Gordo answered no row for 10:10"


def test_windows_longer_than_a_day_name_dates():
    day = Window(T0, T0 + timedelta(days=2))
    [rows] = runs.account([day], STEP, at(0), at(0), lookback=0)
    assert rows.expected == 288 and rows.stored == 1
    assert rows.note.startswith("1 of 288 rows: no complete sensor data at 2026-03-02 10:10–2026-03-04 09:50")


@settings(max_examples=200, deadline=None)
@given(step_sets, st.integers(0, 6))
def test_every_expected_row_is_stored_or_explained(steps, lookback):
    times = at(*steps)
    span = window(0, 300)
    planned = runs.plan(times, STEP, lookback, span)
    stored = np.concatenate([times[run.start + lookback : run.stop] for run in planned.calls] or [at()])
    stored = stored[(stored >= T0_NS) & (stored < T0_NS + 300 * STEP)]
    windows = [window(first) for first in range(0, 300, 3)]
    rows = runs.account(windows, STEP, times, stored, lookback)
    assert sum(r.stored for r in rows) == len(stored)
    for r in rows:
        assert r.expected == 3
        assert (r.note is None) == (r.stored == r.expected)
        if r.note:
            assert r.note.startswith(f"{r.stored} of 3 rows: ")


def test_a_run_with_no_row_in_the_span_is_not_sent():
    """Hourly rows, a half-hour span between two of them: nothing to predict there."""
    hourly = np.array([T0_NS + hour * 6 * STEP for hour in range(10)], dtype=np.int64)
    planned = runs.plan(hourly, 6 * STEP, 2, Window(T0 + timedelta(hours=5, minutes=10), T0 + timedelta(hours=5, minutes=40)))
    assert planned.calls == [] and planned.short == []
    planned = runs.plan(hourly, 6 * STEP, 2, Window(T0 + timedelta(hours=5), T0 + timedelta(hours=5, minutes=30)))
    assert planned.calls == [slice(0, 10)]
