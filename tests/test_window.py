"""Window arithmetic: alignment, no gaps, no overlaps, for any interval and delay."""

import itertools
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latigo.window import Grid, Window

UTC = timezone.utc
T0 = datetime(2026, 3, 1, tzinfo=UTC)

intervals = st.integers(min_value=1, max_value=7 * 24 * 60).map(lambda minutes: timedelta(minutes=minutes))
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
anchors = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC))
delays = st.integers(min_value=0, max_value=3 * 24 * 3600).map(lambda seconds: timedelta(seconds=seconds))


def test_default_grid_is_aligned_to_the_clock():
    grid = Grid(timedelta(minutes=30))
    moment = datetime(2026, 3, 1, 10, 47, 13, tzinfo=UTC)
    assert (grid.floor(moment), grid.ceil(moment)) == (
        datetime(2026, 3, 1, 10, 30, tzinfo=UTC), datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    )


def test_a_window_is_due_only_after_its_end_plus_delay():
    grid = Grid(timedelta(minutes=30))
    delay = timedelta(minutes=5)
    assert grid.last_due_end(datetime(2026, 3, 1, 11, 4, 59, tzinfo=UTC), delay) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert grid.last_due_end(datetime(2026, 3, 1, 11, 5, tzinfo=UTC), delay) == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="naive"):
        Grid(timedelta(minutes=30)).floor(datetime(2026, 1, 1))


def test_other_zones_are_converted_to_utc():
    plus_two = timezone(timedelta(hours=2))
    assert Grid(timedelta(hours=1)).floor(datetime(2026, 1, 1, 12, 30, tzinfo=plus_two)) == datetime(2026, 1, 1, 10, tzinfo=UTC)


@given(intervals, anchors, moments)
def test_floor_is_aligned_and_at_most_one_interval_back(interval, anchor, moment):
    grid = Grid(interval, anchor)
    floor = grid.floor(moment)
    assert grid.is_aligned(floor)
    assert floor <= moment < floor + interval
    assert moment in Window(floor, floor + interval)


@given(intervals, anchors, moments, st.integers(min_value=0, max_value=500))
def test_windows_tile_a_range_without_gaps_or_overlaps(interval, anchor, start, count):
    grid = Grid(interval, anchor)
    end = start + interval * count
    windows = list(grid.windows(start, end))
    assert len(windows) == grid.count(start, end)
    for window in windows:
        assert grid.is_aligned(window.start) and window.end - window.start == interval
        assert start <= window.start and window.end <= end
    for before, after in zip(windows, windows[1:]):
        assert before.end == after.start
    # nothing wholly inside the range is left out
    if windows:
        assert windows[0].start - interval < start
        assert windows[-1].end + interval > end
    else:
        assert grid.ceil(start) + interval > end


@given(intervals, anchors, moments, delays)
def test_the_last_due_window_is_due_and_the_next_is_not(interval, anchor, now, delay):
    grid = Grid(interval, anchor)
    end = grid.last_due_end(now, delay)
    assert grid.is_aligned(end)
    assert now >= end + delay
    assert now < end + interval + delay


@given(
    intervals,
    st.lists(st.integers(min_value=0, max_value=400), min_size=0, max_size=120),
    st.integers(min_value=1, max_value=60),
)
def test_coalescing_covers_each_window_exactly_once(interval, offsets, per_run):
    grid = Grid(interval, T0)
    starts = [T0 + interval * offset for offset in sorted(offsets)]  # oldest first, repeats kept
    runs = list(grid.coalesce(starts, interval * per_run))
    covered = [window.start for run in runs for window in grid.windows(run.start, run.end)]
    assert sorted(covered) == sorted(set(starts))
    for run in runs:
        assert run.end - run.start <= interval * per_run
    for before, after in zip(runs, runs[1:]):
        assert before.end <= after.start


def test_coalescing_splits_runs_at_gaps_and_at_the_span():
    grid = Grid(timedelta(minutes=30), T0)
    starts = [T0 + timedelta(minutes=30) * k for k in (0, 1, 2, 3, 4, 7)]
    assert list(grid.coalesce(starts, timedelta(hours=1))) == [
        Window(T0, T0 + timedelta(hours=1)),
        Window(T0 + timedelta(hours=1), T0 + timedelta(hours=2)),
        Window(T0 + timedelta(hours=2), T0 + timedelta(hours=2, minutes=30)),
        Window(T0 + timedelta(hours=3, minutes=30), T0 + timedelta(hours=4)),
    ]


def test_coalescing_refuses_starts_off_the_grid():
    with pytest.raises(ValueError, match="not on the grid"):
        list(Grid(timedelta(minutes=30), T0).coalesce([T0 + timedelta(minutes=1)], timedelta(hours=1)))


def test_coalescing_refuses_starts_out_of_order():
    later, earlier = T0 + timedelta(hours=1), T0
    with pytest.raises(ValueError, match="oldest first"):
        list(Grid(timedelta(minutes=30), T0).coalesce([later, earlier], timedelta(hours=1)))


def test_coalescing_is_lazy():
    """Counting the runs of an endless stream of windows takes the first ones only."""
    grid = Grid(timedelta(minutes=30), T0)
    endless = (T0 + grid.interval * k for k in itertools.count())
    first, second = itertools.islice(grid.coalesce(endless, timedelta(hours=1)), 2)
    assert (first, second) == (Window(T0, T0 + timedelta(hours=1)), Window(T0 + timedelta(hours=1), T0 + timedelta(hours=2)))


def test_a_run_holds_at_least_one_window():
    grid = Grid(timedelta(minutes=30), T0)
    assert (grid.per_run(timedelta(minutes=1)), grid.per_run(timedelta(hours=2))) == (1, 4)


def test_empty_windows_are_refused():
    with pytest.raises(ValueError, match="empty window"):
        Window(T0, T0)
