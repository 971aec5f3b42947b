"""Gordo's wire format, with plain values: what Latigo sends and how it reads the answer.
(That a real Gordo answers both request encodings identically is in test_gordo_provider.)"""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latigo.errors import PermanentError
from latigo.providers.models import wire

TAGS = ["TAG-1", "TAG-2", "TAG-3"]


def model_input(rows: int, start: str = "2026-03-02T00:00:00Z") -> pd.DataFrame:
    index = pd.date_range(start, periods=rows, freq="10min", tz="UTC")
    values = np.arange(rows * len(TAGS), dtype="float64").reshape(rows, len(TAGS)) / 7
    return pd.DataFrame(values, index=index, columns=TAGS)


def gordo_answer(X: pd.DataFrame) -> pd.DataFrame:
    """An answer laid out as Gordo's anomaly endpoint writes it (pandas, two-level columns)."""
    columns = {("start", ""): X.index.astype(str), ("end", ""): (X.index + pd.Timedelta("10min")).astype(str)}
    for group in ("model-input", "model-output", "tag-anomaly-scaled"):
        for tag in X.columns:
            columns[(group, tag)] = X[tag].to_numpy() * (-1) ** len(columns)
    columns[("total-anomaly-scaled", "")] = X.sum(axis=1).to_numpy()
    return pd.DataFrame(columns, index=X.index)


def parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


# -- requests ------------------------------------------------------------------------------


def test_a_short_frame_travels_as_json_with_every_value_exact():
    X = model_input(5)
    X.iloc[0, 0] = 0.1 + 0.2  # a float whose shortest text is long
    body = wire.request_body(X, X[["TAG-1"]])
    assert body["headers"] == {"Content-Type": "application/json"}
    document = json.loads(body["data"])
    assert set(document) == {"X", "y"} and list(document["y"]) == ["TAG-1"]
    back = pd.DataFrame(document["X"])
    back.index = pd.DatetimeIndex(pd.to_datetime(back.index, format="ISO8601"))
    assert back.index.equals(X.index)
    assert back[TAGS].equals(X)  # bit for bit


def test_a_long_frame_travels_as_parquet():
    X = model_input(wire.JSON_MAX_ROWS + 1)
    body = wire.request_body(X, X)
    assert set(body) == {"files"}
    back = pd.read_parquet(io.BytesIO(body["files"]["X"][1]))
    assert back.equals(X)


def test_the_crossover_is_inclusive():
    assert "data" in wire.request_body(model_input(wire.JSON_MAX_ROWS), model_input(wire.JSON_MAX_ROWS))


def test_a_frame_with_nan_goes_as_parquet_not_as_invalid_json():
    X = model_input(3)
    X.iloc[1, 1] = np.nan
    assert set(wire.request_body(X, X)) == {"files"}


def test_a_naive_index_is_refused():
    X = model_input(3)
    X.index = X.index.tz_localize(None)
    with pytest.raises(ValueError, match="UTC"):
        wire.request_body(X, X)


# -- answers -------------------------------------------------------------------------------


def test_an_answer_reads_as_pandas_reads_it_without_the_bookkeeping_columns():
    answer = gordo_answer(model_input(6))
    frame = wire.read_answer(parquet(answer))
    expected = answer.drop(columns=["start", "end"], level=0)
    assert list(frame.columns) == list(expected.columns)
    assert frame.index.equals(answer.index) and str(frame.index.tz) == "UTC"
    np.testing.assert_array_equal(frame.to_numpy(), expected.to_numpy(dtype="float64"))


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.floats(-1e300, 1e300), st.just(np.nan)), min_size=len(TAGS), max_size=len(TAGS)),
        min_size=0,
        max_size=30,
    )
)
def test_any_values_come_back_as_written(rows):
    X = pd.DataFrame(
        np.array(rows, dtype="float64").reshape(len(rows), len(TAGS)),
        index=pd.date_range("2026-03-02", periods=len(rows), freq="10min", tz="UTC"),
        columns=TAGS,
    )
    answer = gordo_answer(X)
    frame = wire.read_answer(parquet(answer))
    np.testing.assert_array_equal(frame.to_numpy(), answer.drop(columns=["start", "end"], level=0).to_numpy("float64"))


def test_an_answer_in_another_zone_comes_back_in_utc():
    answer = gordo_answer(model_input(2))
    answer.index = answer.index.tz_convert("Europe/Oslo")
    frame = wire.read_answer(parquet(answer))
    assert frame.index.equals(model_input(2).index) and str(frame.index.tz) == "UTC"


@pytest.mark.parametrize(
    "body, message",
    [
        (b"PAR1 not really parquet", "not parquet"),
        (b"<html><body>Sign in</body></html>", "not parquet"),
        (parquet(model_input(3)), r"not \(group, tag\)"),  # one-level columns: not an answer
        (parquet(gordo_answer(model_input(3)).reset_index(drop=True)), "index"),
    ],
)
def test_what_is_not_a_prediction_table_is_permanent(body, message):
    with pytest.raises(PermanentError, match=message):
        wire.read_answer(body)


def test_a_text_output_column_is_permanent():
    answer = gordo_answer(model_input(3))
    answer[("model-output", "TAG-1")] = "oops"
    with pytest.raises(PermanentError, match="non-numeric"):
        wire.read_answer(parquet(answer))
