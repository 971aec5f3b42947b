"""Pure data shaping: padding, resampling, trimming to the window, the column mapping."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latigo import frames
from latigo.providers.models import ModelMetadata
from latigo.window import Window

UTC = timezone.utc
START = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
META = ModelMetadata("demo", "m", "1", ("A", "B"), ("A", "B"), timedelta(minutes=10), offset=3)


def minutes(count, start=START - timedelta(hours=1), columns=("A", "B")):
    index = pd.date_range(start, periods=count, freq="1min", tz="UTC", name="time")
    return pd.DataFrame({c: np.arange(count, dtype=float) + i for i, c in enumerate(columns)}, index=index)


def test_data_starts_early_enough_for_the_offset_and_margin():
    assert frames.data_start(START, META, margin=2) == START - timedelta(minutes=50)


def test_the_read_covers_whole_buckets_when_the_resolution_does_not_divide_the_window():
    """7-minute buckets lie on the epoch's grid; a window edge cuts one. Reading from a bucket
    start to the end of the last bucket starting in the window keeps every bucket whole, so
    its mean is the same in a one-window task and in a longer one."""
    meta = ModelMetadata("demo", "m", "1", ("A",), ("A",), timedelta(minutes=7), offset=2, min_rows=4)
    window = Window(START, START + timedelta(minutes=30))  # 10:00..10:30
    start, end = frames.data_start(window.start, meta, margin=1), frames.data_end(window.end, meta)
    step = timedelta(minutes=7)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert (start - epoch) % step == timedelta(0) and (end - epoch) % step == timedelta(0)
    assert end - step < window.end <= end  # the last bucket starting in the window ends at `end`
    assert window.start - start >= step * (meta.lookback + 1)  # lookback + margin whole buckets before
    assert frames.data_end(START + timedelta(minutes=70), META) == START + timedelta(minutes=70)  # on the grid


def test_resampling_is_a_left_labelled_mean_on_the_model_resolution():
    raw = minutes(20, start=START)
    model_input = frames.to_model_input(raw, META)
    assert list(model_input.index) == [pd.Timestamp(START), pd.Timestamp(START + timedelta(minutes=10))]
    assert model_input["A"].tolist() == [4.5, 14.5]
    assert list(model_input.columns) == ["A", "B"]


def test_resampling_drops_buckets_with_missing_or_infinite_values():
    raw = minutes(30, start=START)
    raw.loc[raw.index[10:20], "B"] = np.nan
    raw.loc[raw.index[25], "A"] = np.inf
    model_input = frames.to_model_input(raw, META)
    # the inf is dropped as a sample (the bucket keeps a mean of the rest); the all-NaN bucket goes
    assert list(model_input.index) == [pd.Timestamp(START), pd.Timestamp(START + timedelta(minutes=20))]
    assert np.isfinite(model_input.to_numpy()).all()


def test_unsorted_timestamps_are_sorted_and_a_duplicate_keeps_the_last_delivered_value():
    raw = minutes(10, start=START)
    raw = pd.concat([raw.iloc[::-1], raw.iloc[[0]] + 100])  # unsorted, then a later correction
    model_input = frames.to_model_input(raw, META)
    assert len(model_input) == 1
    assert model_input["A"].iloc[0] == pytest.approx((100 + sum(range(1, 10))) / 10)


def pandas_resampling(raw: pd.DataFrame, metadata: ModelMetadata) -> pd.DataFrame:
    """What to_model_input does, said with pandas: the oracle for the numpy version."""
    values = raw.loc[:, frames.needed_tags(metadata)].astype("float64").replace([np.inf, -np.inf], np.nan)
    values = values[~values.index.duplicated(keep="last")].sort_index()
    resampled = values.resample(metadata.resolution, label="left", closed="left", origin="epoch").mean()
    return resampled.dropna(how="any")


samples = st.lists(
    st.tuples(
        st.integers(0, 6 * 3600),  # seconds after START
        st.one_of(st.floats(-1e6, 1e6), st.just(np.nan), st.just(np.inf)),
        st.one_of(st.floats(-1e6, 1e6), st.just(np.nan), st.just(-np.inf)),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(samples, st.sampled_from([timedelta(seconds=30), timedelta(minutes=1), timedelta(minutes=10), timedelta(hours=1)]))
def test_resampling_agrees_with_pandas(rows, resolution):
    index = pd.DatetimeIndex([START + timedelta(seconds=second) for second, _, _ in rows], name="time")
    index = index.tz_convert("UTC") if len(rows) else pd.DatetimeIndex([], tz="UTC", name="time")
    raw = pd.DataFrame({"A": [a for _, a, _ in rows], "B": [b for _, _, b in rows]}, index=index, dtype="float64")
    meta = ModelMetadata("demo", "m", "1", ("A", "B"), ("A",), resolution)
    ours, theirs = frames.to_model_input(raw, meta), pandas_resampling(raw, meta)
    assert ours.index.equals(theirs.index) and list(ours.columns) == ["A", "B"]
    # pandas sums with Kahan compensation, numpy without: equal but for the last bits
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=1e-12, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.sampled_from(["A", "B", "C"]), st.floats(-1e6, 1e6)), max_size=60))
def test_pivot_agrees_with_pandas(samples):
    times = np.array([np.datetime64("2026-03-01T10:00", "us") + np.timedelta64(60 * s, "s") for s, _, _ in samples], dtype="datetime64[us]")
    tags = [tag for _, tag, _ in samples]
    values = np.array([value for _, _, value in samples], dtype="float64")
    ours = frames.pivot(times, tags, values, ["C", "A", "B", "D"])
    if not samples:
        assert ours.empty
        return
    long = pd.DataFrame({"time": pd.DatetimeIndex(times).tz_localize("UTC"), "tag": tags, "value": values})
    # several samples of one tag at one instant count as their mean, in any order
    theirs = long.pivot_table(index="time", columns="tag", values="value", aggfunc="mean", dropna=False)
    assert list(ours.columns) == sorted(set(tags)) and ours.index.name == "time" and str(ours.index.tz) == "UTC"
    assert ours.index.equals(theirs.index)
    np.testing.assert_allclose(ours.to_numpy(), theirs[sorted(set(tags))].to_numpy(), rtol=1e-12, atol=1e-6)
    shuffled = np.random.default_rng(len(samples)).permutation(len(samples))
    again = frames.pivot(times[shuffled], [tags[i] for i in shuffled], values[shuffled], ["C", "A", "B", "D"])
    np.testing.assert_allclose(again.to_numpy(), ours.to_numpy(), rtol=1e-12, atol=1e-6)


def test_target_tags_that_are_not_inputs_are_fetched_too():
    meta = ModelMetadata("demo", "m", "1", ("A",), ("B",), timedelta(minutes=10))
    assert frames.needed_tags(meta) == ["A", "B"]
    assert frames.missing_tags(minutes(5, columns=("A",)), meta) == ["B"]


def test_inside_keeps_the_half_open_window():
    frame = minutes(120, start=START - timedelta(minutes=30))
    kept = frames.inside(frame, Window(START, START + timedelta(minutes=30)))
    assert kept.index.min() == pd.Timestamp(START)
    assert kept.index.max() == pd.Timestamp(START + timedelta(minutes=29))


def test_inside_an_unsorted_frame_keeps_the_same_rows():
    frame = minutes(120, start=START - timedelta(minutes=30))
    window = Window(START, START + timedelta(minutes=30))
    shuffled = frame.iloc[np.random.default_rng(1).permutation(len(frame))]
    assert frames.inside(shuffled, window).sort_index().equals(frames.inside(frame, window))


def test_a_store_refuses_rows_outside_its_span():
    frame = minutes(30, start=START)
    frames.check_inside(frame, Window(START, START + timedelta(minutes=30)))
    frames.check_inside(frame.iloc[0:0], Window(START, START + timedelta(minutes=1)))
    with pytest.raises(ValueError, match="do not lie in"):
        frames.check_inside(frame, Window(START, START + timedelta(minutes=29)))
    with pytest.raises(ValueError, match="do not lie in"):
        frames.check_inside(frame, Window(START + timedelta(minutes=1), START + timedelta(hours=1)))


def test_the_model_target_is_the_input_itself_when_the_targets_are_the_inputs():
    X = minutes(3)
    assert frames.to_model_target(X, META) is X
    other = ModelMetadata("demo", "m", "1", ("A", "B"), ("B",), timedelta(minutes=10))
    assert list(frames.to_model_target(X, other).columns) == ["B"]


def gordo_answer(times=2):
    index = pd.date_range(START, periods=times, freq="10min", tz="UTC")
    columns = pd.MultiIndex.from_tuples(
        [("start", ""), ("end", ""), ("model-input", "A"), ("tag-anomaly-scaled", "A"), ("total-anomaly-scaled", "")]
    )
    values = [["s", "e", 1.0 + t, 2.0 + t, 3.0 + t] for t in range(times)]
    return pd.DataFrame(values, index=index, columns=columns)


def test_output_series_map_columns_to_output_and_tag():
    series, values = frames.output_series(gordo_answer())
    # start and end are bookkeeping, not predictions; a total's tag is its group, as gordo-client
    assert series == [("model-input", "A"), ("tag-anomaly-scaled", "A"), ("total-anomaly-scaled", "total-anomaly-scaled")]
    assert values.dtype == np.float64 and values.tolist() == [[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]


def test_missing_tags_are_decided_window_by_window():
    raw = minutes(90, start=START)  # A and B every minute, 10:00..11:30
    raw.loc[raw.index[30:60], "B"] = np.nan  # B out 10:30..11:00
    raw = raw.drop(index=raw.index[60:75])  # nothing at all 11:00..11:15
    windows = [Window(START + timedelta(minutes=30 * k), START + timedelta(minutes=30 * (k + 1))) for k in range(4)]
    assert frames.missing_per_window(raw, ["A", "B"], windows) == [[], ["B"], [], ["A", "B"]]
    shuffled = raw.iloc[np.random.default_rng(3).permutation(len(raw))]
    assert frames.missing_per_window(shuffled, ["A", "B", "C"], windows) == [["C"], ["B", "C"], ["C"], ["A", "B", "C"]]
    assert frames.missing_per_window(frames.empty_frame(), ["A"], windows[:1]) == [["A"]]
