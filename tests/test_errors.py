"""The error tables: how each backend's failures become Latigo's error classes."""

from __future__ import annotations

import pytest
import requests
import sqlalchemy.exc

from latigo import calls
from latigo.db import DATABASE_ERRORS, translate_outage
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
from latigo.outages import DATABASE, GORDO, SENSOR_STORE, dependency_of
from latigo.providers.influx import INFLUX_ANSWERS, INFLUX_ERRORS, INFLUX_STATEMENT_ERRORS, _DatabaseNotFound
from latigo.providers.models.gordo import GORDO_ANSWERS, GORDO_ERRORS

TABLE = (
    Caught(requests.exceptions.SSLError, PermanentError, "{where}: {name}"),
    Caught(requests.exceptions.ConnectionError, Unavailable, "{where}: {error}"),
)


def test_the_first_matching_row_decides_as_except_clauses_would() -> None:
    # an SSLError is a ConnectionError too: the narrower row above wins
    with pytest.raises(PermanentError, match=r"^here: SSLError$"), translated(TABLE, SENSOR_STORE, where="here"):
        raise requests.exceptions.SSLError("bad certificate")
    with pytest.raises(Unavailable, match=r"^here: refused$") as raised, translated(TABLE, SENSOR_STORE, where="here"):
        raise requests.exceptions.ConnectionError("refused")
    assert raised.value.dependency == SENSOR_STORE
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_what_no_row_matches_leaves_as_it_is() -> None:
    original = KeyError("not a transport error")
    with pytest.raises(KeyError) as raised, translated(TABLE, SENSOR_STORE, where="here"):
        raise original
    assert raised.value is original
    with pytest.raises(RevisionGone), translated(TABLE, SENSOR_STORE, where="here"):
        raise RevisionGone("a Latigo error raised inside passes untouched")


def test_an_unavailable_row_needs_the_dependency() -> None:
    with pytest.raises(TypeError, match="dependency"), translated(TABLE, where="here"):
        raise requests.exceptions.ConnectionError("refused")


def test_a_task_past_its_deadline_stays_the_tasks_own_not_an_outage() -> None:
    for table, context in ((INFLUX_ERRORS, {"url": "http://influx"}), (GORDO_ERRORS, {"what": "p/m", "base": "b"})):
        with pytest.raises(calls.TaskExpired) as raised, translated(table, GORDO, **context):
            raise calls.TaskExpired("the task's deadline has passed")
        assert dependency_of(raised.value) is None
        with pytest.raises(Unavailable) as cut, translated(table, GORDO, **context):
            raise calls.CallTimedOut("no complete answer within 1 s")
        assert dependency_of(cut.value) == GORDO


def test_a_connect_timeout_to_gordo_says_timed_out() -> None:
    # requests' ConnectTimeout is a ConnectionError and a Timeout: the Timeout row is first
    with pytest.raises(Unavailable, match=r"Gordo timed out \(ConnectTimeout\)"):
        with translated(GORDO_ERRORS, GORDO, what="p/m", base="http://gordo"):
            raise requests.exceptions.ConnectTimeout("slow")


def test_database_errors_are_the_stores_outage_and_others_the_callers() -> None:
    refused = sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    with pytest.raises(Unavailable, match=r"^sensor store unavailable: ConnectionRefusedError") as raised:
        with translate_outage(SENSOR_STORE):
            raise refused
    assert raised.value.dependency == SENSOR_STORE
    violated = sqlalchemy.exc.IntegrityError("INSERT", {}, ValueError("unique"))
    with pytest.raises(sqlalchemy.exc.IntegrityError), translate_outage(SENSOR_STORE):
        raise violated
    # the ledger's and the queue's own calls are not translated: the same table names them
    assert dependency_of(refused) == DATABASE and dependency_of(violated) is None
    assert [row.becomes for row in DATABASE_ERRORS] == [Unavailable]


def test_a_good_answer_is_not_read_for_an_error() -> None:
    reads: list[int] = []

    def detail() -> str:
        reads.append(1)
        return "text"

    for status in (200, 204):
        assert answer_error(INFLUX_ANSWERS, status, SENSOR_STORE, detail, url="u") is None
        assert answer_error(GORDO_ANSWERS, status, GORDO, detail, what="p/m") is None
    assert reads == []
    assert isinstance(answer_error(GORDO_ANSWERS, 500, GORDO, detail, what="p/m"), TransientError)
    assert reads == [1]


@pytest.mark.parametrize(
    ("status", "detail", "error"),
    [
        (404, 'database not found: "db"', _DatabaseNotFound),  # a write to a missing database
        (404, "404 page not found", PermanentError),  # a wrong path: nothing to create
        (400, "partial write: field type conflict", PermanentError),
        (401, "authorization failed", PermanentError),
        (408, "", Unavailable),
        (429, "", Unavailable),
        (500, "", Unavailable),
        (503, "", Unavailable),
    ],
)
def test_influxdb_answers(status: int, detail: str, error: type[Exception]) -> None:
    found = answer_error(INFLUX_ANSWERS, status, SENSOR_STORE, detail, url="http://influx")
    assert type(found) is error
    assert str(found) == f"InfluxDB http://influx: HTTP {status}: {detail}"


def test_influxdb_statement_errors() -> None:
    missing = answer_error(INFLUX_STATEMENT_ERRORS, 200, detail="database not found: db", url="u")
    assert type(missing) is _DatabaseNotFound and str(missing) == "InfluxDB u: database not found: db"
    assert type(answer_error(INFLUX_STATEMENT_ERRORS, 200, detail="error parsing query", url="u")) is PermanentError


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (410, RevisionGone),
        (408, Unavailable),
        (429, Unavailable),
        (502, Unavailable),
        (503, Unavailable),
        (504, Unavailable),
        (425, TransientError),  # one model's, worth a retry, but not Gordo's outage
        (500, TransientError),
        (400, PermanentError),
        (404, PermanentError),
        (501, PermanentError),
    ],
)
def test_gordo_answers(status: int, error: type[Exception]) -> None:
    found = answer_error(GORDO_ANSWERS, status, GORDO, "the body", what="p/m")
    assert type(found) is error
    assert str(found).startswith("p/m: ") and str(found).endswith(": the body")


def test_a_row_can_need_the_start_of_the_error_text() -> None:
    table = (Answered({404}, RevisionGone, "{detail}", detail="gone"), Answered({404}, PermanentError, "{detail}"))
    assert type(answer_error(table, 404, detail="gone for good")) is RevisionGone
    assert type(answer_error(table, 404, detail="never there")) is PermanentError
    assert answer_error(table, 410, detail="gone") is None
