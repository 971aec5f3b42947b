"""Gordo's REST API as ModelInformationProvider and ModelExecutionProvider.

Every call has a connect and a read timeout, and every failure is mapped to Latigo's error
classes here, once: 410 means the revision is gone, 5xx/408/429 and network trouble are
transient, other 4xx are permanent, and a 200 that is not what was asked for (a proxy's
HTML login page, say) is permanent too, never parsed as data. What travels, and how it is
read, is in ``wire.py``.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from time import monotonic
from typing import Any
from urllib.parse import quote

import pandas as pd
import requests
import urllib3

from latigo import calls
from latigo.config import GordoConfig
from latigo.errors import (
    Answered,
    Caught,
    PermanentError,
    RevisionGone,
    TransientError,
    Unavailable,
    answer_error,
    translated,
)
from latigo.metrics import GORDO_CLIENT_SECONDS, GORDO_SERVER_SECONDS
from latigo.outages import GORDO
from latigo.providers.models import ModelExecutionProvider, ModelInformationProvider, ModelMetadata, wire

# HTTP statuses worth retrying
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
# of those, the ones that may mean Gordo as a whole is down or overloaded (latigo.outages probes it)
UNAVAILABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
# what the failures of a call to Gordo are (as for httpx's transport errors: the first row whose
# class the exception is decides; a requests ConnectTimeout is a Timeout first)
GORDO_ERRORS = (
    # the task's time is up, not Gordo's fault: a task's own error
    Caught(calls.TaskExpired, calls.TaskExpired, "{what}: {error}"),
    Caught(calls.CallTimedOut, Unavailable, "{what}: Gordo gave no complete answer in time ({error})"),
    Caught(requests.Timeout, Unavailable, "{what}: Gordo timed out ({name})"),
    Caught(
        (requests.ConnectionError, requests.exceptions.ChunkedEncodingError),
        Unavailable,
        "{what}: cannot reach Gordo at {base}: {name}",
    ),
    # while reading the body: cut short, timed out
    Caught(urllib3.exceptions.HTTPError, Unavailable, "{what}: Gordo's answer broke off: {name}"),
    Caught(requests.RequestException, PermanentError, "{what}: bad request to Gordo: {error}"),
)
# what Gordo's error answers are, by status
GORDO_ANSWERS = (
    Answered({410}, RevisionGone, "{what}: revision gone (410): {detail}"),
    Answered(UNAVAILABLE_STATUSES, Unavailable, "{what}: Gordo answered {status}: {detail}"),
    # one model's error (a 500 for its input), worth a retry
    Answered(TRANSIENT_STATUSES, TransientError, "{what}: Gordo answered {status}: {detail}"),
    Answered(range(400, 1000), PermanentError, "{what}: Gordo answered {status}: {detail}"),
)
# what a failed probe of Gordo's /healthcheck is: whatever the failure, Gordo cannot be reached now
GORDO_PROBE_ERRORS = (Caught((requests.RequestException, calls.CallTimedOut), Unavailable, "Gordo at {base}: {name}"),)
# longest piece of an error body quoted in an error message
BODY_QUOTE = 300
# the largest offset or lookback taken from metadata: a model looking back further (a year of
# 10-minute rows) is a mistake, and the padding would not fit in a datetime
MAX_LOOKBACK = 100_000
# the lookback_window of Gordo's Keras LSTM estimators when their definition names none
GORDO_DEFAULT_LOOKBACK = 1
# the finest resolution taken from metadata: each window counts its rows one by one
MIN_RESOLUTION = timedelta(seconds=1)
# the resolution Gordo's datasets use when their config names none
DEFAULT_RESOLUTION = "10T"
# pandas' current spelling of the frequency aliases older Gordo metadata uses ("10T")
_LEGACY_FREQUENCIES = {"T": "min", "H": "h", "S": "s", "L": "ms", "U": "us", "N": "ns"}


def parse_resolution(text: str) -> timedelta:
    """Gordo's dataset resolution ("10T", "10min", "1H") as a timedelta."""
    match = re.fullmatch(r"\s*(\d*)\s*([A-Za-z]+)\s*", text or "")
    if not match:
        raise PermanentError(f"resolution {text!r} is not a frequency")
    number, unit = match.groups()
    unit = _LEGACY_FREQUENCIES.get(unit, unit)
    try:
        resolution = pd.to_timedelta(pd.tseries.frequencies.to_offset(f"{number or 1}{unit}")).to_pytimedelta()
    except ValueError as error:
        raise PermanentError(f"resolution {text!r} is not a frequency: {error}") from None
    if resolution <= timedelta(0):
        raise PermanentError(f"resolution {text!r} is not positive")
    return resolution


class BadMetadata(PermanentError):
    """Gordo's metadata of a model is not what Latigo can predict with; never cached."""


def parse_metadata(project: str, model: str, revision: str, document: Any) -> ModelMetadata:
    """Pick what Latigo needs out of Gordo's ``/metadata`` answer, checked: a list of distinct
    string tags, a parseable resolution, a whole non-negative offset. Anything else is
    BadMetadata, never a guess (a string ``tag_list`` read as a list is one tag per letter)."""
    what = f"{project}/{model}@{revision}: bad metadata"
    machine = _mapping(document, "metadata", what)
    dataset = _mapping(machine, "dataset", what)
    tags = _tag_list(dataset.get("tag_list"), "tag_list", what)
    if not tags:
        raise BadMetadata(f"{what}: dataset.tag_list lists no tags")
    targets = _tag_list(dataset.get("target_tag_list"), "target_tag_list", what) or tags
    resolution_text = dataset.get("resolution", DEFAULT_RESOLUTION)
    if not isinstance(resolution_text, str):
        raise BadMetadata(f"{what}: dataset.resolution is {resolution_text!r}, not a frequency")
    try:
        resolution = parse_resolution(resolution_text)
    except PermanentError as error:
        raise BadMetadata(f"{what}: dataset.{error}") from None
    if resolution < MIN_RESOLUTION:
        raise BadMetadata(f"{what}: dataset.resolution {resolution_text!r} is finer than {MIN_RESOLUTION}")
    inner = machine.get("metadata") or {}
    build = (inner.get("build_metadata") or {}) if isinstance(inner, dict) else None
    built = (build.get("model") or {}) if isinstance(build, dict) else None
    if not isinstance(built, dict):
        raise BadMetadata(f"{what}: metadata.build_metadata.model is not a mapping")
    # no offset recorded: a model that answers every row (older builds wrote none)
    offset = 0 if built.get("model_offset") is None else _whole(built["model_offset"], "model_offset", what)
    lookback = _whole(max(_lookbacks(machine.get("model")), default=0), "lookback_window", what)
    return ModelMetadata(project, model, revision, tags, targets, resolution, offset, min_rows=lookback + 1)


def _mapping(document: Any, key: str, what: str) -> dict[str, Any]:
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(value, dict):
        raise BadMetadata(f"{what}: no {key} mapping")
    return value


def _tag_list(value: Any, key: str, what: str) -> tuple[str, ...]:
    """Tag names from a list of names or of ``{"name": ...}`` mappings (None: no list)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadMetadata(f"{what}: dataset.{key} is {type(value).__name__}, not a list of tags")
    given = [tag.get("name") if isinstance(tag, dict) else tag for tag in value]
    names = tuple(name for name in given if isinstance(name, str) and name)
    if len(names) != len(given):
        wrong = [name for name in given if not isinstance(name, str) or not name]
        raise BadMetadata(f"{what}: dataset.{key} has tags that are not names: {wrong[:5]!r}")
    if len(set(names)) != len(names):
        raise BadMetadata(f"{what}: dataset.{key} names a tag twice")
    return names


def _whole(value: Any, key: str, what: str) -> int:
    number = int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_LOOKBACK:
        raise BadMetadata(f"{what}: {key} is {value!r}, not a whole number from 0 to {MAX_LOOKBACK}")
    return number


def _lookbacks(definition: Any) -> list[int]:
    """Every ``lookback_window`` in a model definition (nested mappings and lists); a Keras
    LSTM written without one has Gordo's default."""
    if isinstance(definition, dict):
        found = [value for key, value in definition.items() if key == "lookback_window" and type(value) is int]
        found += [
            GORDO_DEFAULT_LOOKBACK
            for key, value in definition.items()
            if "LSTM" in str(key) and isinstance(value, dict) and "lookback_window" not in value
        ]
        return found + [size for value in definition.values() for size in _lookbacks(value)]
    if isinstance(definition, list):
        return [size for value in definition for size in _lookbacks(value)]
    return []


def _route(*parts: str) -> str:
    """A Gordo route from names, each percent-encoded: a model called ``q?x=1#frag`` or
    ``pct%2Fenc`` must reach that model, not a query string or another path."""
    return "/".join(quote(part, safe="") for part in parts)


@dataclass(frozen=True)
class Answer:
    """Gordo's whole answer, read within the call's time limit."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    # the call's wall time as Latigo saw it, seconds
    seconds: float

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "")

    def quote(self) -> str:
        """The start of the body for an error message; HTML reduced to its text."""
        text = self.body[:BODY_QUOTE].decode("utf-8", "replace")
        if "html" in self.content_type:
            text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()
        return text

    def server_seconds(self) -> float | None:
        """Gordo's own time, from its ``Server-Timing: request_walltime_s;dur=...`` header."""
        match = re.search(r"request_walltime_s;dur=([0-9.eE+-]+)", self.headers.get("Server-Timing", ""))
        return float(match.group(1)) if match else None


def _observe_timing(answer: Answer) -> None:
    GORDO_CLIENT_SECONDS.observe(answer.seconds)
    seconds = answer.server_seconds()
    if seconds is not None:
        GORDO_SERVER_SECONDS.observe(seconds)


class GordoModels(ModelInformationProvider, ModelExecutionProvider):
    def __init__(self, config: GordoConfig, auth_http_client: Any = None) -> None:
        self._base = config.base_url.rstrip("/")
        self._timeout = (config.connect_timeout, config.read_timeout)
        # a whole call, answer included, ends within this many seconds
        self._call_limit = config.connect_timeout + config.read_timeout
        self._session = calls.session(config.max_concurrency)
        if config.auth is not None:
            from latigo.auth import AzureAdAuth

            # the token endpoint's calls are made inside a Gordo call, under its deadline
            self._session.auth = AzureAdAuth(config.auth, self._timeout, auth_http_client or calls.session())
        # a per-server limit: Gordo workers are few and keep only a couple of models loaded
        self._slots = threading.BoundedSemaphore(config.max_concurrency)
        # models whose anomaly endpoint answered 422: they are plain models, use /prediction
        self._plain_models: set[tuple[str, str, str]] = set()

    # -- HTTP --------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, what: str, *, passthrough: frozenset[int] = frozenset(), **kwargs: Any
    ) -> Answer:
        """One request, answer included, within connect + read timeout; statuses in
        ``passthrough`` are returned for the caller to decide."""
        url = f"{self._base}/gordo/v0/{path}"
        with translated(GORDO_ERRORS, GORDO, what=what, base=self._base), self._slots:
            started = monotonic()
            with (
                calls.deadline(self._call_limit),
                self._session.request(method, url, timeout=self._timeout, stream=True, **kwargs) as response,
            ):
                body = response.raw.read(decode_content=True)
        answer = Answer(response.status_code, response.headers, body, monotonic() - started)
        if not calls.framed(response.headers):
            # Gordo (gunicorn) frames every answer; headers without a length were cut short,
            # which http.client cannot tell from an answer that had no more headers
            raise Unavailable(GORDO, f"{what}: Gordo's answer broke off in its headers (no Content-Length)")
        if answer.status in passthrough:
            return answer
        error = answer_error(GORDO_ANSWERS, answer.status, GORDO, answer.quote, what=what)
        if error is not None:
            raise error
        return answer

    def _json(self, path: str, what: str, **params: str) -> dict[str, Any]:
        answer = self._call("GET", path, what, params=params or None)
        if "json" not in answer.content_type:
            raise PermanentError(
                f"{what}: expected JSON, got {answer.content_type or 'no content type'}: {answer.quote()}"
            )
        try:
            document = json.loads(answer.body)
        except ValueError:
            raise PermanentError(f"{what}: invalid JSON: {answer.quote()}") from None
        if not isinstance(document, dict):
            raise PermanentError(f"{what}: expected a JSON object")
        return document

    # -- ModelInformationProvider ------------------------------------------------------

    def latest_revision(self, project: str) -> str:
        document = self._json(_route(project, "revisions"), f"{project}: revisions")
        revision = str(document.get("latest", ""))
        if not revision.isdigit():
            raise PermanentError(f"{project}: Gordo gave no latest revision: {document!r:.{BODY_QUOTE}}")
        return revision

    def models(self, project: str, revision: str | None = None) -> list[str]:
        params = {"revision": revision} if revision else {}
        document = self._json(_route(project, "models"), f"{project}: models", **params)
        return sorted(str(name) for name in document.get("models", []))

    def expected_models(self, project: str) -> list[str]:
        document = self._json(_route(project, "expected-models"), f"{project}: expected models")
        return sorted(str(name) for name in document.get("expected-models", []))

    def metadata(self, project: str, model: str, revision: str) -> ModelMetadata:
        """Asked of Gordo at every call: latigo.catalogue keeps the answers for the fleet."""
        what = f"{project}/{model}@{revision}: metadata"
        document = self._json(_route(project, model, "metadata"), what, revision=revision)
        return parse_metadata(project, model, revision, document)

    # -- ModelExecutionProvider --------------------------------------------------------

    def predict(self, metadata: ModelMetadata, X: pd.DataFrame, y: pd.DataFrame) -> pd.DataFrame:
        key = (metadata.project, metadata.model, metadata.revision)
        if key not in self._plain_models:
            frame = self._predict(metadata, "anomaly/prediction", X, y)
            if frame is not None:
                return frame
            # 422: not an anomaly model; remember it for this model only, never globally
            self._plain_models.add(key)
        frame = self._predict(metadata, "prediction", X, y)
        assert frame is not None
        return frame

    def _predict(self, metadata: ModelMetadata, endpoint: str, X: pd.DataFrame, y: pd.DataFrame) -> pd.DataFrame | None:
        """Gordo's answer, or None when the anomaly endpoint says the model has no anomaly part."""
        what = f"{metadata.project}/{metadata.model}@{metadata.revision}: {endpoint}"
        anomaly = endpoint.startswith("anomaly")
        answer = self._call(
            "POST",
            f"{_route(metadata.project, metadata.model)}/{endpoint}",
            what,
            passthrough=frozenset({422}) if anomaly else frozenset(),
            params={"format": "parquet", "revision": metadata.revision},
            **wire.request_body(X, y),
        )
        if answer.status == 422:
            return None
        _observe_timing(answer)
        if answer.content_type != "application/octet-stream":
            raise PermanentError(
                f"{what}: expected a parquet answer, got {answer.content_type or 'no content type'}: {answer.quote()}"
            )
        try:
            frame = wire.read_answer(answer.body)
            wire.check_answer(frame, metadata, X.index, anomaly)
        except PermanentError as error:
            raise PermanentError(f"{what}: {error}") from None
        return frame

    def probe(self) -> None:
        """Gordo's /healthcheck answers 200: the server as a whole is up."""
        with (
            translated(GORDO_PROBE_ERRORS, GORDO, base=self._base),
            calls.deadline(self._call_limit),
            self._session.get(f"{self._base}/healthcheck", timeout=self._timeout) as response,
        ):
            status = response.status_code
        if status != 200:
            raise Unavailable(GORDO, f"Gordo at {self._base}: /healthcheck answered {status}")

    def close(self) -> None:
        self._session.close()
