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
    theirs = long.pivot_table(index="time", columns="tag", values="value", aggfunc="last", dropna=False)
    assert list(ours.columns) == sorted(set(tags)) and ours.index.name == "time" and str(ours.index.tz) == "UTC"
    assert ours.index.equals(theirs.index)
    np.testing.assert_array_equal(ours.to_numpy(), theirs[sorted(set(tags))].to_numpy())


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
    assert frames.any_inside(shuffled, window) and frames.any_inside(frame, window)
    later = Window(START + timedelta(hours=5), START + timedelta(hours=6))
    assert not frames.any_inside(frame, later) and not frames.any_inside(shuffled, later)


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
