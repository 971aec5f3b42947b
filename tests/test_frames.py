"""Pure data shaping: padding, resampling, trimming to the window, the column mapping."""

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

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


def test_target_tags_that_are_not_inputs_are_fetched_too():
    meta = ModelMetadata("demo", "m", "1", ("A",), ("B",), timedelta(minutes=10))
    assert frames.needed_tags(meta) == ["A", "B"]
    assert frames.missing_tags(minutes(5, columns=("A",)), meta) == ["B"]


def test_inside_keeps_the_half_open_window():
    frame = minutes(120, start=START - timedelta(minutes=30))
    kept = frames.inside(frame, Window(START, START + timedelta(minutes=30)))
    assert kept.index.min() == pd.Timestamp(START)
    assert kept.index.max() == pd.Timestamp(START + timedelta(minutes=29))


def gordo_answer(times=2):
    index = pd.date_range(START, periods=times, freq="10min", tz="UTC")
    columns = pd.MultiIndex.from_tuples(
        [("start", ""), ("end", ""), ("model-input", "A"), ("tag-anomaly-scaled", "A"), ("total-anomaly-scaled", "")]
    )
    values = [["s", "e", 1.0 + t, 2.0 + t, 3.0 + t] for t in range(times)]
    return pd.DataFrame(values, index=index, columns=columns)


def test_to_long_maps_columns_to_output_and_tag():
    long = frames.to_long(gordo_answer())
    assert len(long) == 2 * 3  # start and end are bookkeeping, not predictions
    first = long[long["time"] == pd.Timestamp(START)].set_index(["output", "tag"])["value"].to_dict()
    assert first == {
        ("model-input", "A"): 1.0,
        ("tag-anomaly-scaled", "A"): 2.0,
        ("total-anomaly-scaled", "total-anomaly-scaled"): 3.0,  # a total's tag is its group, as gordo-client
    }
