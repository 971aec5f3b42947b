"""Session fixture ``windowed_gordo``: a real Gordo 6.0.4 server with windowed models (Keras LSTMs).

A model with a lookback answers fewer rows than it is sent (``N - model_offset``), needs
more than its lookback window of rows at all, and dates its answer from the input's
index: exactly what Latigo's padding and trimming must get right, and what the demo
models (offset 0) never exercise. A mock would only repeat our own reading of Gordo, so
these are two real LSTM models, built by Gordo's own builder in the full install (with
TensorFlow, which the light install's shim cannot stand in for) and served by Gordo's
server:

* ``lstm-ae``: ``KerasLSTMAutoEncoder`` (``lstm_hourglass``), lookback 6, model_offset 5;
* ``lstm-fc``: ``KerasLSTMForecast`` (``lstm_symmetric``), lookback 6, model_offset 6;

both ``DiffBasedAnomalyDetector`` over the demo pump's three tags at 10 minutes, trained
one epoch on the clean synthetic process (``latigo.demo.signals``).

The full virtualenv (``.gordo/venv-full``, 2.4 GB, about a minute to create) and the built
models (``.gordo/windowed-models/``, about 45 s to build: TensorFlow's start and graph
tracing, not the data) are cached across sessions and redone only when their pins,
configs or data generator change; ``make gordo-full`` (part of ``make test``) prepares both
ahead with ``python -m tests.windowed_fixture``. Each session copies the built revision
twice into a temp root, as an older revision ``REVISION_A`` and the latest ``REVISION_B``
(same models, so both predict the same), and serves it with the full virtualenv on a free
port. Import it from conftest.py::

    from tests.windowed_fixture import windowed_gordo  # noqa: F401
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from latigo.demo import gordo
from latigo.demo.models import DATA_PROVIDER, tags_of

# gordo project of the windowed models
WINDOWED_PROJECT = "windowed"
# the demo pump's tags: the synthetic process makes them correlated, as real ones are
TAGS = tags_of("pump-1")
# model resolution, as written in gordo configs (pandas offset alias)
RESOLUTION = "10T"
# the same as a duration
RESOLUTION_STEP = timedelta(minutes=10)
# training window (two weeks; a shorter one saves no build time: TensorFlow's overhead dominates)
TRAIN_START = "2026-01-01T00:00:00+00:00"
TRAIN_END = "2026-01-15T00:00:00+00:00"
# rows each LSTM looks back over
LOOKBACK_WINDOW = 6
# Keras settings: one epoch is enough, the tests need the model's shape, not its skill
KERAS_FIT = {"epochs": 1, "batch_size": 64}
# model name -> (gordo estimator, its kind)
ESTIMATORS = {
    "lstm-ae": ("gordo.machine.model.models.KerasLSTMAutoEncoder", "lstm_hourglass"),
    "lstm-fc": ("gordo.machine.model.models.KerasLSTMForecast", "lstm_symmetric"),
}
# model name -> model_offset that gordo's builder gives it (checked in metadata.json)
OFFSETS = {"lstm-ae": 5, "lstm-fc": 6}
# model name -> fewest input rows gordo accepts: more than the lookback window (else a 500)
MIN_ROWS = {name: LOOKBACK_WINDOW + 1 for name in ESTIMATORS}
# older revision served beside the latest: 2026-01-15T00:00Z, the end of training
REVISION_A = "1768435200"
# latest revision: a day later, the same models
REVISION_B = "1768521600"
# cache of the built models: a collection root with one revision
CACHE_ROOT = gordo.GORDO_HOME / "windowed-models"
# revision folder of the cache
CACHE_REVISION = REVISION_A


def windowed_model(name: str) -> dict:
    """The gordo machine config of one windowed model (a fresh dict)."""
    estimator, kind = ESTIMATORS[name]
    lstm = {estimator: {"kind": kind, "lookback_window": LOOKBACK_WINDOW, **KERAS_FIT}}
    return {
        "name": name,
        "project_name": WINDOWED_PROJECT,
        "dataset": {
            "type": "TimeSeriesDataset",
            "tag_list": list(TAGS),
            "target_tag_list": list(TAGS),
            "train_start_date": TRAIN_START,
            "train_end_date": TRAIN_END,
            "resolution": RESOLUTION,
            "data_provider": {"type": DATA_PROVIDER},
        },
        "model": {
            "gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector": {
                "scaler": "sklearn.preprocessing.MinMaxScaler",
                "base_estimator": {
                    "sklearn.pipeline.Pipeline": {
                        "steps": ["sklearn.preprocessing.MinMaxScaler", lstm]
                    }
                },
            }
        },
    }


def windowed_models() -> list[dict]:
    """Fresh configs of every windowed model."""
    return [windowed_model(name) for name in ESTIMATORS]


def prepare() -> tuple[Path, Path]:
    """Ensure the full virtualenv and the cached models; (venv folder, cached revision folder)."""
    venv_dir = gordo.ensure_venv(gordo.FULL_VENV, requirements=gordo.FULL_REQUIREMENTS, shim=False)
    revision_dir = gordo.build_models(venv_dir, CACHE_ROOT, CACHE_REVISION, windowed_models())
    return venv_dir, revision_dir


@dataclass(frozen=True)
class WindowedGordo:
    """Where the session's windowed Gordo server is and what it serves."""

    base_url: str  # http://127.0.0.1:<port>, no trailing slash
    project: str  # gordo project of the windowed models
    revision_a: str  # older revision (same models)
    revision_b: str  # revision served as latest
    models: dict[str, int]  # model name -> model_offset
    min_rows: dict[str, int]  # model name -> fewest input rows gordo accepts
    tags: list[str]  # tags of every model (inputs and targets)
    resolution: timedelta  # the models' resolution
    root: Path  # collection root: one folder per revision
    revision_dir: Path  # folder of the latest revision (MODEL_COLLECTION_DIR)
    log_file: Path  # gunicorn's log
    venv_dir: Path  # the full Gordo virtualenv, for building more models with gordo.build_models

    @property
    def project_url(self) -> str:
        """``<base_url>/gordo/v0/<project>``, the prefix of every model route."""
        return f"{self.base_url}/gordo/v0/{self.project}"


@pytest.fixture(scope="session")
def windowed_gordo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WindowedGordo]:
    """Serve the windowed models at two revisions for the test session; stop it at the end."""
    venv_dir, cached = prepare()
    session_dir = tmp_path_factory.mktemp("windowed-gordo")
    root = session_dir / "models"
    for revision in (REVISION_A, REVISION_B):
        shutil.copytree(cached, root / revision)
    revision_dir = root / REVISION_B
    log_file = session_dir / "gunicorn.log"
    port = gordo.free_port()
    proc = gordo.serve(
        venv_dir, revision_dir, port, list(OFFSETS), log_file, start_timeout=gordo.FULL_START_TIMEOUT_S
    )
    try:
        yield WindowedGordo(
            base_url=f"http://127.0.0.1:{port}",
            project=WINDOWED_PROJECT,
            revision_a=REVISION_A,
            revision_b=REVISION_B,
            models=dict(OFFSETS),
            min_rows=dict(MIN_ROWS),
            tags=list(TAGS),
            resolution=RESOLUTION_STEP,
            root=root,
            revision_dir=revision_dir,
            log_file=log_file,
            venv_dir=venv_dir,
        )
    finally:
        gordo.stop(proc)


def main() -> int:
    """``python -m tests.windowed_fixture``: prepare the cache ahead of a test session."""
    started = time.monotonic()
    try:
        venv_dir, revision_dir = prepare()
    except gordo.GordoError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"windowed Gordo ready: {venv_dir}, {revision_dir} ({time.monotonic() - started:.1f} s)", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
