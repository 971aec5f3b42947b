"""The small InfluxDB 1.x HTTP client both Influx backends share, and InfluxDB's quoting.

Both Influx backends talk to InfluxDB's 1.x HTTP API (``/query``, ``/write``) through
``requests`` rather than the ``influxdb`` library: its DataFrameClient silently writes
wrong timestamps with pandas 3 (it takes a non-nanosecond index for nanoseconds), its
InfluxDBClient retries on its own and raises its own exceptions, and neither takes a
separate connect and read timeout. Here every call has both timeouts, and every failure
leaves as Unavailable (connection refused, timeouts, 5xx: transient, and latigo.outages
probes the server) or PermanentError (other 4xx, errors in the query, an answer that is not
InfluxDB's), as the tables ``INFLUX_ERRORS``, ``INFLUX_ANSWERS`` and
``INFLUX_STATEMENT_ERRORS`` say, so the executor's retry policy decides.

Quoting follows InfluxDB's own rules, so no tag name can change the meaning of a query
or of a line: InfluxQL identifiers and strings escape backslash, the quote and newline
(influxql's ``QuoteIdent`` and ``QuoteString``); line protocol escapes comma, space and
equals sign. Line protocol cannot carry a newline or a trailing backslash in a name, so
such a name is refused (PermanentError) rather than written under another name.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from itertools import islice
from typing import Any

import numpy as np
import pandas as pd
import requests

from latigo import calls
from latigo.config import InfluxConfig
from latigo.errors import Answered, Caught, PermanentError, Unavailable, answer_error, translated
from latigo.window import utc

# rows per chunk InfluxDB streams back, so a server's max-row-limit cannot truncate an answer
QUERY_CHUNK = 10_000
# bytes read from an answer at a time (requests' default of 512 was most of a week's read:
# bench/README.md, "Sensor reads")
READ_CHUNK = 1 << 16
# 4xx statuses that a later retry can fix (request timeout, rate limiting)
RETRYABLE_4XX = frozenset({408, 429})
# how InfluxDB's errors about a missing database begin: InfluxDB 1.x gives its errors no code,
# only the text of the JSON "error" field, so this text is the one signal of a missing database
DATABASE_NOT_FOUND = "database not found"
# the only status InfluxDB answers a successful write with; a 200 is someone else (a proxy)
WRITE_OK = 204
# characters InfluxQL escapes inside a quoted identifier or string (influxql QuoteIdent/QuoteString)
_IDENT_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})
_STRING_ESCAPES = str.maketrans({"\\": "\\\\", "'": "\\'", "\n": "\\n"})
# characters line protocol escapes in tag keys, tag values and field keys
_KEY_ESCAPES = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
# characters line protocol escapes in a measurement name
_MEASUREMENT_ESCAPES = str.maketrans({",": "\\,", " ": "\\ "})


def quote_ident(name: str) -> str:
    """An InfluxQL identifier (measurement, tag key, field, database) in double quotes."""
    return '"' + name.translate(_IDENT_ESCAPES) + '"'


def measurements_regex(names: Iterable[str]) -> str:
    """An InfluxQL regex literal matching exactly these measurement names."""
    return "/^(" + "|".join(re.escape(name).replace("/", "\\/") for name in sorted(names)) + ")$/"


def quote_string(text: str) -> str:
    """An InfluxQL string literal (a tag value) in single quotes."""
    return "'" + text.translate(_STRING_ESCAPES) + "'"


def _check_line_name(text: str, what: str) -> None:
    if "\n" in text or "\r" in text:
        raise PermanentError(f"{what} {text!r} contains a line break, which line protocol cannot carry")
    if text.endswith("\\"):
        raise PermanentError(f"{what} {text!r} ends in a backslash, which line protocol cannot carry")


def escape_key(text: str, what: str = "tag") -> str:
    """A tag key, tag value or field key for line protocol."""
    _check_line_name(text, what)
    return text.translate(_KEY_ESCAPES)


def escape_measurement(name: str) -> str:
    """A measurement name for line protocol."""
    _check_line_name(name, "measurement")
    return name.translate(_MEASUREMENT_ESCAPES)


def rfc3339(moment: datetime) -> str:
    """An aware datetime as an InfluxQL time literal, in UTC, to the nanosecond it carries."""
    return pd.Timestamp(utc(moment)).tz_convert(None).isoformat() + "Z"


def time_suffixes(times_ns: np.ndarray) -> list[str]:
    """`` <nanoseconds>``: the end of a line at each time, worked out once for all the series
    that share the times."""
    return [f" {time}" for time in times_ns.tolist()]


def float_lines(prefix: str, field: str, values: np.ndarray, suffixes: Sequence[str]) -> Iterator[str]:
    """Line protocol for one series: ``prefix field=value time`` for every finite value
    (``suffixes`` from :func:`time_suffixes`).

    NaN and infinities are skipped: an InfluxDB field cannot hold them, and a missing
    point is what "no value" means there.
    """
    head = f"{prefix} {field}="
    # repr() of a Python float is the shortest text that reads back as the same float
    for value, suffix, finite in zip(values.tolist(), suffixes, np.isfinite(values).tolist()):
        if finite:
            yield f"{head}{value!r}{suffix}"


def _batches(lines: Iterable[str], size: int) -> Iterator[list[str]]:
    """Lines in lists of ``size``, taken from ``lines`` as they come: memory holds one batch,
    however many lines there are."""
    lines = iter(lines)
    while batch := list(islice(lines, size)):
        yield batch


class _DatabaseNotFound(PermanentError):
    """A write met a missing database: create it, then write again."""


# what the failures of a call to InfluxDB are (as for httpx's transport errors: the first row
# whose class the exception is decides)
INFLUX_ERRORS = (
    # the task's time is up, not InfluxDB's fault: a task's own error
    Caught(calls.TaskExpired, calls.TaskExpired, "InfluxDB {url}: {error}"),
    Caught(calls.CallTimedOut, Unavailable, "InfluxDB {url}: {error}"),
    # certificates and TLS settings do not heal by retrying (an SSLError is a ConnectionError)
    Caught(requests.exceptions.SSLError, PermanentError, "InfluxDB {url}: {error}"),
    Caught(
        (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.ChunkedEncodingError),
        Unavailable,
        "InfluxDB {url}: {error}",
    ),
    Caught(requests.exceptions.RequestException, PermanentError, "InfluxDB {url}: {error}"),
)
# what InfluxDB's error answers are, by status and, for a missing database (the write of a
# missing database is a 404 whose JSON error says so), by the start of the "error" field
INFLUX_ANSWERS = (
    Answered({404}, _DatabaseNotFound, "InfluxDB {url}: HTTP {status}: {detail}", detail=DATABASE_NOT_FOUND),
    Answered(RETRYABLE_4XX, Unavailable, "InfluxDB {url}: HTTP {status}: {detail}"),
    Answered(range(500, 1000), Unavailable, "InfluxDB {url}: HTTP {status}: {detail}"),
    Answered(range(400, 500), PermanentError, "InfluxDB {url}: HTTP {status}: {detail}"),
)
# what an error inside a successful answer is: a statement that failed (a query of a missing
# database is answered 200 with the error in its result)
INFLUX_STATEMENT_ERRORS = (
    Answered(range(200, 300), _DatabaseNotFound, "InfluxDB {url}: {detail}", detail=DATABASE_NOT_FOUND),
    Answered(range(200, 300), PermanentError, "InfluxDB {url}: {detail}"),
)


def _error_text(response: requests.Response) -> str:
    try:
        document = response.json()
    except ValueError:
        document = None
    message = document.get("error") if isinstance(document, dict) else None
    return str(message or response.text[:200] or response.reason)


class InfluxHttp:
    """InfluxDB 1.x's HTTP API for one database: both timeouts on every call, failures mapped
    to TransientError / PermanentError, and the database created when a write finds it
    missing (so only that first write needs the right to create databases)."""

    def __init__(self, config: InfluxConfig, dependency: str) -> None:
        self.url = config.url.rstrip("/")
        # what this server is to Latigo (the sensor or the prediction store), for latigo.outages
        self.dependency = dependency
        self.database = config.database
        self._timeout = (config.connect_timeout, config.read_timeout)
        # a whole call, answer included, ends within this many seconds (latigo.calls)
        self._limit = config.connect_timeout + config.read_timeout
        self._session = calls.session()
        if config.username:
            self._session.auth = (config.username, config.password.get_secret_value())

    @contextmanager
    def _exchange(self, method: str, path: str, **kwargs: Any) -> Iterator[requests.Response]:
        """One HTTP call whose failures, including those while reading the body, come out as
        Latigo errors."""
        url = self.url + path
        with (
            translated(INFLUX_ERRORS, self.dependency, url=url),
            calls.deadline(self._limit),
            self._session.request(method, url, timeout=self._timeout, **kwargs) as response,
        ):
            if response.status_code != WRITE_OK and not calls.framed(response.headers):
                raise Unavailable(self.dependency, f"InfluxDB {url}: the answer broke off in its headers")
            error = answer_error(
                INFLUX_ANSWERS, response.status_code, self.dependency, lambda: _error_text(response), url=url
            )
            if error is not None:
                raise error
            yield response

    def ping(self) -> None:
        """Raise unless InfluxDB answers its /ping (204) now."""
        with self._exchange("GET", "/ping") as response:
            if response.status_code != WRITE_OK:
                raise Unavailable(self.dependency, f"InfluxDB {self.url}: /ping answered {response.status_code}")

    def query(self, statement: str) -> list[dict[str, Any]]:
        """Run one read statement; return its series (``name``, ``tags``, ``columns``,
        ``values``) with times as integer nanoseconds, chunks of one series merged.

        The statement goes in a POST body: a model with hundreds of tags makes a query too
        long for the URL limits of proxies in front of InfluxDB."""
        params = {"db": self.database, "epoch": "ns", "chunked": "true", "chunk_size": str(QUERY_CHUNK)}
        merged: dict[tuple[Any, ...], dict[str, Any]] = {}
        with self._exchange("POST", "/query", params=params, data={"q": statement}, stream=True) as response:
            if "json" not in response.headers.get("Content-Type", ""):
                raise PermanentError(
                    f"InfluxDB {self.url}: not an InfluxDB answer "
                    f"(Content-Type {response.headers.get('Content-Type')!r})"
                )
            for line in response.iter_lines(chunk_size=READ_CHUNK):
                if line:
                    for series in _series_of(line, self.url):
                        key = (series.get("name"), tuple(sorted((series.get("tags") or {}).items())))
                        if key in merged:
                            merged[key]["values"].extend(series.get("values") or [])
                        else:
                            merged[key] = {**series, "values": list(series.get("values") or [])}
        return list(merged.values())

    def command(self, statement: str, *, database: bool = False) -> None:
        """Run one statement that changes the server (CREATE DATABASE, DROP ..., DELETE), in
        this client's database with ``database``."""
        params = {"db": self.database} if database else None
        with self._exchange("POST", "/query", params=params, data={"q": statement}) as response:
            for _ in _series_of(response.content, self.url):
                pass

    def delete(self, statement: str) -> None:
        """Run one DELETE statement; a database that does not exist yet holds nothing to
        delete. (One statement: InfluxDB 1.6 answers several on a missing database with an
        unexplained "not executed".)"""
        try:
            self.command(statement, database=True)
        except _DatabaseNotFound:
            pass

    def write(self, lines: Iterable[str], batch_size: int) -> int:
        """POST line protocol (nanosecond timestamps) in batches of ``batch_size`` lines, built
        as they are sent; a missing database is created (CREATE DATABASE is idempotent) and
        the batch sent again. Returns how many lines were written."""
        written = 0
        for batch in _batches(lines, batch_size):
            body = "\n".join(batch).encode("utf-8")
            try:
                self._post_lines(body)
            except _DatabaseNotFound:
                self.command(f"CREATE DATABASE {quote_ident(self.database)}")
                self._post_lines(body)
            written += len(batch)
        return written

    def _post_lines(self, body: bytes) -> None:
        params = {"db": self.database, "precision": "ns"}
        with self._exchange("POST", "/write", params=params, data=body) as response:
            if response.status_code != WRITE_OK:
                raise PermanentError(
                    f"InfluxDB {self.url}: a write was answered with HTTP {response.status_code}, "
                    f"not {WRITE_OK}: not an InfluxDB server (a proxy's page?)"
                )

    def close(self) -> None:
        self._session.close()


def _series_of(document: bytes | str, url: str) -> Iterable[dict[str, Any]]:
    """The series of one JSON answer (one chunk); statement errors become PermanentError."""
    try:
        parsed = json.loads(document)
    except ValueError as error:
        raise PermanentError(f"InfluxDB {url}: the answer is not JSON: {str(document)[:200]!r}") from error
    if not isinstance(parsed, dict):
        raise PermanentError(f"InfluxDB {url}: unexpected answer {str(document)[:200]!r}")
    for message in [parsed.get("error")] + [result.get("error") for result in parsed.get("results") or []]:
        if message:
            failed = answer_error(INFLUX_STATEMENT_ERRORS, 200, detail=str(message), url=url)
            raise failed or PermanentError(f"InfluxDB {url}: {message}")
    for result in parsed.get("results") or []:
        yield from result.get("series") or []
