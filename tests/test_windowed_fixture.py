"""The windowed Gordo fixture serves what it says: real LSTM models with an offset, at two revisions.

Tests of Latigo's padding and trimming lean on these facts (offsets, the fewest rows
Gordo accepts, the index of its answer), so they are checked here against the real
server, with plain HTTP calls, not taken on trust.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pandas as pd
import pytest
import requests

from latigo.demo import signals
from tests.windowed_fixture import ESTIMATORS, LOOKBACK_WINDOW

pytestmark = pytest.mark.integration

# (connect, read) seconds for one call; the first prediction loads a Keras model
HTTP_TIMEOUT_S = (3.05, 60)
# start of the input rows sent for predictions (after the training window)
X_START = datetime(2026, 3, 2, tzinfo=UTC)
# output column groups that are per row of the answer (start/end are too, but as timestamps)
ROW_GROUPS = ("model-input", "model-output", "tag-anomaly-scaled", "total-anomaly-scaled")


def _get(server, path: str, revision: str | None = None) -> requests.Response:
    params = {"revision": revision} if revision else None
    response = requests.get(f"{server.project_url}/{path}", params=params, timeout=HTTP_TIMEOUT_S)
    response.raise_for_status()
    return response


def _rows(server, n: int) -> pd.DataFrame:
    """``n`` consecutive rows of the clean synthetic process at the models' resolution."""
    frame = signals.signal(server.tags, X_START, X_START + n * server.resolution, step=server.resolution)
    assert len(frame) == n
    return frame


def _post_anomaly(server, model: str, frame: pd.DataFrame, revision: str | None = None) -> requests.Response:
    """POST ``frame`` as X and y, JSON, to the anomaly endpoint."""
    columns = {tag: {ts.isoformat(): float(v) for ts, v in frame[tag].items()} for tag in frame.columns}
    return requests.post(
        f"{server.project_url}/{model}/anomaly/prediction",
        params={"revision": revision} if revision else None,
        json={"X": columns, "y": columns},
        timeout=HTTP_TIMEOUT_S,
    )


def _answer(response: requests.Response) -> pd.DataFrame:
    """A JSON prediction answer as a frame: two-level columns (group, tag), UTC index."""
    data = response.json()["data"]
    frame = pd.DataFrame(
        {(group, tag): pd.Series(values) for group, tags in data.items() for tag, values in tags.items()}
    )
    frame.index = pd.to_datetime(frame.index, utc=True).as_unit("ns")  # the unit of signals' index
    return frame.sort_index()


def test_both_revisions_are_listed_and_b_is_latest(windowed_gordo):
    revisions = _get(windowed_gordo, "revisions").json()
    assert windowed_gordo.revision_b > windowed_gordo.revision_a
    assert revisions["latest"] == windowed_gordo.revision_b
    assert sorted(revisions["available-revisions"]) == [windowed_gordo.revision_a, windowed_gordo.revision_b]


@pytest.mark.parametrize("which", ["revision_a", "revision_b"])
def test_metadata_has_the_offset_and_the_lookback_at_each_revision(windowed_gordo, which):
    revision = getattr(windowed_gordo, which)
    listed = _get(windowed_gordo, "models", revision).json()["models"]
    assert sorted(listed) == sorted(windowed_gordo.models)
    for name, offset in windowed_gordo.models.items():
        response = _get(windowed_gordo, f"{name}/metadata", revision)
        assert response.headers["revision"] == revision
        metadata = response.json()["metadata"]
        assert metadata["dataset"]["tag_list"] == windowed_gordo.tags
        assert metadata["metadata"]["build_metadata"]["model"]["model_offset"] == offset
        detector = metadata["model"]["gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector"]
        lstm = detector["base_estimator"]["sklearn.pipeline.Pipeline"]["steps"][-1]
        estimator, kind = ESTIMATORS[name]
        assert lstm[estimator]["lookback_window"] == LOOKBACK_WINDOW
        assert lstm[estimator]["kind"] == kind


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_the_fewest_rows_answer_n_minus_offset_rows_dated_from_the_input(windowed_gordo, name):
    offset, n = windowed_gordo.models[name], windowed_gordo.min_rows[name]
    x = _rows(windowed_gordo, n)
    response = _post_anomaly(windowed_gordo, name, x)
    assert response.status_code == 200, response.text[:500]
    answer = _answer(response)
    assert len(answer) == n - offset
    pd.testing.assert_index_equal(answer.index, x.index[offset:], check_names=False)
    for group in ROW_GROUPS:
        assert answer[group].notna().all().all(), group
    # the model-input rows are the input's last n - offset rows, unchanged
    model_input = answer["model-input"][windowed_gordo.tags]
    pd.testing.assert_frame_equal(model_input, x.iloc[offset:], check_names=False, check_freq=False)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_one_row_fewer_is_a_500(windowed_gordo, name):
    x = _rows(windowed_gordo, windowed_gordo.min_rows[name] - 1)
    assert _post_anomaly(windowed_gordo, name, x).status_code == 500


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_both_revisions_predict_the_same(windowed_gordo, name):
    x = _rows(windowed_gordo, 3 * windowed_gordo.min_rows[name])
    answers = [
        _post_anomaly(windowed_gordo, name, x, revision)
        for revision in (windowed_gordo.revision_a, windowed_gordo.revision_b)
    ]
    assert [response.headers["revision"] for response in answers] == [
        windowed_gordo.revision_a,
        windowed_gordo.revision_b,
    ]
    pd.testing.assert_frame_equal(_answer(answers[0]), _answer(answers[1]))
