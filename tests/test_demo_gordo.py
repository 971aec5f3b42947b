"""The local Gordo used by the demo and the tests: synthetic signals, demo models, real server.

The synthetic process must be a pure function of (tag, time), or the models would be
trained on other data than the demo sends them; the server must serve every demo model
with the configured tags; and the injected anomalies must stand out in the real server's
anomaly scores, or the demo shows nothing.
"""

from __future__ import annotations

import functools
import io
import re
import socket
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from latigo.demo import gordo, signals
from latigo.demo.models import DEMO_PROJECT, demo_models, model_names, tags_of

# every tag of every demo model
ALL_TAGS = [tag for name in model_names() for tag in tags_of(name)]
# start of the reference range of the sub-range tests (a cycle boundary of the anomalies)
REF_START = datetime(2026, 3, 1, tzinfo=UTC)
# length of the reference range
REF_SPAN = timedelta(days=2)
# the model's resolution as a pandas 3 resample rule ("10T" is gone in pandas 3)
RESAMPLE_RULE = "10min"
# seconds allowed for one HTTP call to the local server
HTTP_TIMEOUT_S = 30
# how many times an injected anomaly's peak score must exceed the worst normal row
SPIKE_DRIFT_FACTOR = 10
STUCK_FACTOR = 3


@functools.cache
def _reference(with_anomalies: bool) -> pd.DataFrame:
    """All demo tags over the reference range, once per flag."""
    return signals.signal(ALL_TAGS, REF_START, REF_START + REF_SPAN, with_anomalies=with_anomalies)


# ---------------------------------------------------------------- signals


def test_signal_grid_is_utc_aligned_and_half_open():
    frame = signals.signal(
        ["PUMP1-PT-101"], "2026-03-01T00:03:30+01:00", "2026-03-01T01:00:00", step=timedelta(minutes=10)
    )
    assert str(frame.index.tz) == "UTC"
    assert frame.index[0] == pd.Timestamp("2026-02-28T23:10:00Z")  # first multiple of 10 min at/after start
    assert frame.index[-1] == pd.Timestamp("2026-03-01T00:50:00Z")  # end excluded
    assert (np.diff(frame.index.asi8) == 600 * 10**9).all()
    assert list(frame.columns) == ["PUMP1-PT-101"]
    assert frame.notna().all().all()


def test_signal_sub_range_equals_the_same_rows_of_a_bigger_call():
    big = _reference(False)
    tags = tags_of("compressor-1")[2:5]
    sub = signals.signal(tags, REF_START + timedelta(hours=7, seconds=1), REF_START + timedelta(hours=19))
    assert len(sub) == 12 * 60 - 1
    pd.testing.assert_frame_equal(sub, big.loc[sub.index, tags])


@settings(max_examples=40, deadline=None)
@given(
    start_min=st.integers(0, int(REF_SPAN.total_seconds() // 60) - 1),
    length_min=st.integers(1, 600),
    tag_picks=st.lists(st.sampled_from(ALL_TAGS), min_size=1, max_size=6, unique=True),
    step_min=st.sampled_from([1, 5, 10]),
    with_anomalies=st.booleans(),
)
def test_signal_is_a_function_of_tag_and_time(start_min, length_min, tag_picks, step_min, with_anomalies):
    start = REF_START + timedelta(minutes=start_min)
    end = min(start + timedelta(minutes=length_min), REF_START + REF_SPAN)
    sub = signals.signal(
        tag_picks, start, end, step=timedelta(minutes=step_min), with_anomalies=with_anomalies
    )
    expected = _reference(with_anomalies)
    expected = expected.loc[(expected.index >= start) & (expected.index < end), tag_picks]
    pd.testing.assert_frame_equal(sub, expected[expected.index.asi8 % (step_min * 60 * 10**9) == 0])


def test_tags_of_one_machine_are_correlated():
    frame = _reference(False)[tags_of("turbine-1")].resample(RESAMPLE_RULE).mean()
    corr = frame.corr().abs().to_numpy()
    assert np.median(corr[np.triu_indices_from(corr, k=1)]) > 0.8


def test_each_machine_gets_one_anomaly_per_cycle_of_each_kind_in_turn():
    for name in model_names():
        found = signals.anomalies(tags_of(name), REF_START, REF_START + REF_SPAN)
        assert len(found) == REF_SPAN // signals.ANOMALY_CYCLE
        kinds = [a.kind for a in found]
        assert {kinds[i] for i in range(3)} == set(signals.ANOMALY_KINDS)
        assert all(a.tag in tags_of(name) and a.start < a.end for a in found)


def test_anomalies_change_only_their_own_tag_and_window():
    clean, faulty = _reference(False), _reference(True)
    inside = pd.DataFrame(False, index=clean.index, columns=clean.columns)
    for anomaly in signals.anomalies(ALL_TAGS, REF_START, REF_START + REF_SPAN):
        inside.loc[(clean.index >= anomaly.start) & (clean.index < anomaly.end), anomaly.tag] = True
    assert faulty.where(~inside).equals(clean.where(~inside))
    changed = (faulty != clean) & inside
    assert changed.to_numpy().sum() > 0.9 * inside.to_numpy().sum()  # all but first minutes of drift/stuck


def test_in_anomaly_marks_the_rows_of_anomalies():
    tags = tags_of("pump-1")
    index = pd.date_range(REF_START, REF_START + REF_SPAN, freq=RESAMPLE_RULE, inclusive="left")
    mask = signals.in_anomaly(tags, index)
    found = signals.anomalies(tags, REF_START, REF_START + REF_SPAN)
    expected_rows = sum((a.end - a.start) // timedelta(minutes=10) for a in found)
    assert mask.sum() == expected_rows


# ---------------------------------------------------------------- models and tooling


def test_demo_models_are_anomaly_models_with_3_to_20_distinct_sensor_tags():
    configs = demo_models()
    assert len(configs) >= 3
    seen: set[str] = set()
    for config in configs:
        tags = tags_of(config["name"])
        assert config["project_name"] == DEMO_PROJECT
        assert 3 <= len(tags) <= 20
        assert config["dataset"]["tag_list"] == tags == config["dataset"]["target_tag_list"]
        assert all(re.fullmatch(r"[A-Z]+\d+-[A-Z]+-\d{3}", tag) for tag in tags)
        assert not seen & set(tags)
        seen |= set(tags)
        assert "DiffBasedAnomalyDetector" in next(iter(config["model"]))
    assert max(len(tags_of(name)) for name in model_names()) == 20


def test_serve_refuses_a_busy_port(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(gordo.GordoError, match="in use"):
            gordo.serve(tmp_path / "venv", tmp_path / "1", port, ["m"], tmp_path / "log")


# ---------------------------------------------------------------- the real server


def _get(server, path: str) -> dict:
    response = requests.get(f"{server.project_url}/{path}", timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return response.json()


def _anomaly_scores(server, model: str, frame: pd.DataFrame) -> pd.DataFrame:
    """POST ``frame`` as X and y (parquet) to the anomaly endpoint; the parquet answer."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    body = buffer.getvalue()
    response = requests.post(
        f"{server.project_url}/{model}/anomaly/prediction",
        params={"format": "parquet"},
        files={"X": ("X", body), "y": ("y", body)},
        timeout=HTTP_TIMEOUT_S,
    )
    response.raise_for_status()
    return pd.read_parquet(io.BytesIO(response.content))


@pytest.mark.integration
def test_server_serves_every_demo_model(gordo_server):
    assert requests.get(f"{gordo_server.base_url}/healthcheck", timeout=HTTP_TIMEOUT_S).status_code == 200
    assert sorted(_get(gordo_server, "models")["models"]) == sorted(model_names())
    assert sorted(_get(gordo_server, "expected-models")["expected-models"]) == sorted(model_names())
    assert _get(gordo_server, "revisions")["latest"] == gordo_server.revision
    for name in model_names():
        metadata = _get(gordo_server, f"{name}/metadata")["metadata"]
        assert metadata["project_name"] == DEMO_PROJECT
        assert metadata["dataset"]["tag_list"] == tags_of(name)
        assert metadata["dataset"]["target_tag_list"] == tags_of(name)
        assert metadata["dataset"]["resolution"] == "10T"
        assert metadata["metadata"]["build_metadata"]["model"]["model_offset"] == 0


# 48-row windows: all spikes; whole drifts; whole stuck sensors
WINDOWS = ["2026-03-02T00:00:00+00:00", "2026-03-02T08:00:00+00:00", "2026-03-02T16:00:00+00:00"]


@pytest.mark.integration
@pytest.mark.parametrize("window_start", WINDOWS)
@pytest.mark.parametrize("model", model_names())
def test_injected_anomalies_stand_out_in_the_scores(gordo_server, model, window_start):
    tags = tags_of(model)
    start = pd.Timestamp(window_start)
    end = start + pd.Timedelta(hours=8)
    faulty = signals.signal(tags, start, end, with_anomalies=True).resample(RESAMPLE_RULE).mean()
    clean = signals.signal(tags, start, end).resample(RESAMPLE_RULE).mean()
    assert len(faulty) == 48

    scored = _anomaly_scores(gordo_server, model, faulty)
    scored_clean = _anomaly_scores(gordo_server, model, clean)
    for group in ("tag-anomaly-scaled", "anomaly-confidence", "total-anomaly-confidence"):
        assert group in scored.columns.get_level_values(0)
    score = scored[("total-anomaly-scaled", "")]
    confidence = scored[("total-anomaly-confidence", "")]
    normal = ~signals.in_anomaly(tags, faulty.index).to_numpy()
    worst_normal = score[normal].max()
    np.testing.assert_allclose(score[normal], scored_clean[("total-anomaly-scaled", "")][normal])

    whole = [a for a in signals.anomalies(tags, start, end) if a.start >= start and a.end <= end]
    assert whole, "every window holds at least one whole anomaly"
    for anomaly in whole:
        rows = (faulty.index >= anomaly.start) & (faulty.index < anomaly.end)
        factor = STUCK_FACTOR if anomaly.kind == "stuck" else SPIKE_DRIFT_FACTOR
        assert score[rows].max() > factor * worst_normal, (anomaly, score[rows].max(), worst_normal)
        assert confidence[rows].max() > 1, anomaly
