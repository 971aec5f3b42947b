"""The Gordo provider against the real server, and its error mapping against answers a real
Gordo (or a proxy in front of it) gives in bad moments.

The bad answers come from a small canned-answer HTTP server started by the test: a real
Gordo cannot be made to answer with a proxy's login page, and making it return a 500 on
demand would need a fault-injecting proxy (a later issue). Every status and body used here
is one the reference notes Gordo or a proxy actually sends.
"""

from __future__ import annotations

import copy
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import pandas as pd
import pytest

from latigo.config import GordoConfig
from latigo.demo import gordo
from latigo.demo.models import demo_models, tags_of
from latigo.demo.signals import signal
from latigo.errors import PermanentError, RevisionGone, TransientError
from latigo.providers.models import wire
from latigo.providers.models.gordo import GordoModels

# an older revision, served beside the demo models' latest one, holding a plain model
OLD_REVISION = "1000000000"


def model_input(model: str) -> pd.DataFrame:
    raw = signal(tags_of(model), "2026-03-02T00:00:00Z", "2026-03-02T02:00:00Z")
    return raw.resample("10min").mean()


@pytest.fixture(scope="module")
def gordo_models(gordo_server) -> GordoModels:
    return GordoModels(GordoConfig(base_url=gordo_server.base_url, read_timeout=30))


def test_discovery_and_metadata(gordo_models, gordo_server):
    assert gordo_models.latest_revision("demo") == gordo_server.revision
    assert gordo_models.models("demo") == sorted(gordo_server.models)
    assert gordo_models.expected_models("demo") == sorted(gordo_server.models)
    meta = gordo_models.metadata("demo", "compressor-1", gordo_server.revision)
    assert list(meta.tags) == tags_of("compressor-1") and meta.resolution == timedelta(minutes=10)
    assert meta.offset == 0


def test_anomaly_prediction_over_parquet(gordo_models, gordo_server):
    meta = gordo_models.metadata("demo", "pump-1", gordo_server.revision)
    X = model_input("pump-1")
    answer = gordo_models.predict(meta, X, X)
    assert len(answer) == len(X) and answer.index.equals(X.index)
    assert ("total-anomaly-scaled", "") in answer.columns
    assert {tag for group, tag in answer.columns if group == "tag-anomaly-scaled"} == set(tags_of("pump-1"))


def test_json_and_parquet_requests_get_the_same_answer(gordo_models, gordo_server, monkeypatch):
    meta = gordo_models.metadata("demo", "compressor-1", gordo_server.revision)
    X = model_input("compressor-1")
    sent = []
    monkeypatch.setattr(wire, "to_parquet", lambda frame, real=wire.to_parquet: sent.append(len(frame)) or real(frame))
    as_json = gordo_models.predict(meta, X, X)
    assert sent == []  # a short frame goes as JSON
    monkeypatch.setattr(wire, "JSON_MAX_ROWS", 0)
    as_parquet = gordo_models.predict(meta, X, X)
    assert sent == [len(X), len(X)]  # X and y really went as parquet the second time
    pd.testing.assert_frame_equal(as_json, as_parquet, check_exact=True)


def test_an_unknown_revision_is_gone(gordo_models, gordo_server):
    meta = gordo_models.metadata("demo", "pump-1", gordo_server.revision)
    stale = type(meta)(**{**meta.__dict__, "revision": "123"})
    with pytest.raises(RevisionGone, match="410"):
        gordo_models.predict(stale, model_input("pump-1"), model_input("pump-1"))


def test_an_unknown_model_is_permanent(gordo_models, gordo_server):
    with pytest.raises(PermanentError, match="404"):
        gordo_models.metadata("demo", "no-such-model", gordo_server.revision)


def test_a_model_without_anomaly_part_falls_back_to_prediction_for_itself_only(gordo_models, gordo_server):
    plain = copy.deepcopy(next(m for m in demo_models() if m["name"] == "pump-1"))
    plain["name"] = "plain-pump"
    plain["model"] = plain["model"]["gordo.machine.model.anomaly.diff.DiffBasedAnomalyDetector"]["base_estimator"]
    gordo.build_models(gordo_server.venv_dir, gordo_server.root, OLD_REVISION, models=[plain])

    X = model_input("pump-1")
    meta = gordo_models.metadata("demo", "plain-pump", OLD_REVISION)
    answer = gordo_models.predict(meta, X, X)  # the anomaly endpoint answers 422: /prediction
    assert {group for group, _ in answer.columns} == {"model-input", "model-output"}
    # the decision is per model: an anomaly model still gets anomaly columns
    anomaly_meta = gordo_models.metadata("demo", "pump-1", gordo_server.revision)
    assert ("total-anomaly-scaled", "") in gordo_models.predict(anomaly_meta, X, X).columns


# -- bad answers ---------------------------------------------------------------------------

LOGIN_PAGE = b"<html><head><title>Sign in</title></head><body><form>Sign in to continue</form></body></html>"
ERROR_PAGE = b"<!doctype html><html><title>500 Internal Server Error</title><h1>Internal Server Error</h1></html>"

# path suffix -> (status, content type, body)
CANNED = {
    "login/revisions": (200, "text/html", LOGIN_PAGE),
    "error/revisions": (500, "text/html", ERROR_PAGE),
    "busy/revisions": (503, "application/json", b'{"message": "overloaded"}'),
    "bad/revisions": (400, "application/json", b'{"message": "bad request"}'),
    "notjson/revisions": (200, "application/json", b"{not json"),
    "norevision/revisions": (200, "application/json", b'{"latest": null}'),
    "demo/m/anomaly/prediction": (200, "text/html", LOGIN_PAGE),
    "garbage/m/anomaly/prediction": (200, "application/octet-stream", b"PAR1 not really parquet"),
    "nan/m/anomaly/prediction": (500, "text/html", ERROR_PAGE),
}


class Canned(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        path = self.path.split("?")[0].removeprefix("/gordo/v0/")
        if path.startswith("hang/"):
            self.server.release.wait(10)  # type: ignore[attr-defined]
            return
        status, kind, body = CANNED.get(path, (404, "text/html", b"<h1>Not Found</h1>"))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def canned() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    server.release = threading.Event()  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.release.set()  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "project, error, message",
    [
        ("login", PermanentError, "expected JSON, got text/html: Sign in Sign in to continue"),
        ("error", TransientError, "answered 500: 500 Internal Server Error Internal Server Error"),
        ("busy", TransientError, "answered 503"),
        ("bad", PermanentError, "answered 400"),
        ("notjson", PermanentError, "invalid JSON"),
        ("norevision", PermanentError, "no latest revision"),
        ("missing", PermanentError, "answered 404: Not Found"),
    ],
)
def test_bad_discovery_answers(canned, project, error, message):
    with pytest.raises(error, match=message):
        GordoModels(GordoConfig(base_url=canned)).latest_revision(project)


@pytest.mark.parametrize(
    "project, error, message",
    [
        ("demo", PermanentError, "expected a parquet answer, got text/html: Sign in"),
        ("garbage", PermanentError, "answer is not parquet"),
        ("nan", TransientError, "answered 500"),
    ],
)
def test_bad_prediction_answers(canned, project, error, message):
    from latigo.providers.models import ModelMetadata

    meta = ModelMetadata(project, "m", "1", ("A",), ("A",), timedelta(minutes=10))
    frame = pd.DataFrame({"A": [1.0]}, index=pd.DatetimeIndex(["2026-01-01"], tz="UTC"))
    with pytest.raises(error, match=message):
        GordoModels(GordoConfig(base_url=canned)).predict(meta, frame, frame)


def test_a_hanging_gordo_times_out(canned):
    with pytest.raises(TransientError, match="timed out"):
        GordoModels(GordoConfig(base_url=canned, read_timeout=0.3)).latest_revision("hang")


def test_nobody_listening_is_transient():
    with pytest.raises(TransientError, match="cannot reach Gordo"):
        GordoModels(GordoConfig(base_url="http://127.0.0.1:9", connect_timeout=1)).latest_revision("demo")


def test_calls_in_flight_to_one_gordo_never_exceed_the_limit():
    """models.max_concurrency bounds the calls one process has in flight to its Gordo, however
    many executor threads ask at once."""
    import time as clock_time

    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    class Slow(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with lock:
                state["now"] += 1
                state["most"] = max(state["most"], state["now"])
            clock_time.sleep(0.2)  # a slow Gordo: the point is to have calls overlap
            with lock:
                state["now"] -= 1
            body = b'{"latest": "1", "available-revisions": ["1"]}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        gordo = GordoModels(GordoConfig(base_url=f"http://127.0.0.1:{server.server_address[1]}", max_concurrency=2))
        threads = [threading.Thread(target=gordo.latest_revision, args=("demo",)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        server.shutdown()
        server.server_close()
    assert state["most"] == 2
