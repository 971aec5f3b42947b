"""The InfluxDB 1.x backends against a real influxd: sensor data both ways, predictions in
gordo-client's layout, idempotent overwrites, NaN handling, and errors by class."""

from __future__ import annotations

import math
import socket
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd
import pytest

from latigo.config import InfluxPredictionsConfig, InfluxSensorsConfig
from latigo.errors import PermanentError, TransientError
from latigo.providers.predictions.influx import InfluxPredictions
from latigo.providers import influx as influx_http
from latigo.providers.sensors import influx as sensors_influx
from latigo.providers.influx import InfluxHttp
from latigo.providers.sensors.influx import InfluxSensors
from latigo.window import Window
from tests.influx_fixture import InfluxServer

pytestmark = pytest.mark.integration

# a Monday at midnight, where the tests' data starts
# every test's predictions lie in this span: a store replaces what it holds
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)
SPAN = Window(T0 - timedelta(days=1), T0 + timedelta(days=1))
# a sensor name that needs escaping both in InfluxQL and in line protocol
ODD_TAG = 'it\'s "odd", a=b \\ tag\\1'
# a tag value that would widen the query if it were pasted in unquoted
INJECTION = "x' OR \"tag\" = 'T2"


def sensors_for(url: str, database: str, **overrides: Any) -> InfluxSensors:
    return InfluxSensors(InfluxSensorsConfig(type="influx", url=url, database=database, **overrides))


def predictions_for(url: str, database: str, **overrides: Any) -> InfluxPredictions:
    return InfluxPredictions(InfluxPredictionsConfig(type="influx", url=url, database=database, **overrides))


def times(count: int, step: timedelta = timedelta(minutes=10)) -> pd.DatetimeIndex:
    return pd.DatetimeIndex([T0 + step * i for i in range(count)], name="time")


def gordo_answer(rows: int = 4) -> pd.DataFrame:
    """An answer shaped like Gordo's /anomaly/prediction: two-level columns, UTC index."""
    index = times(rows)
    columns = [
        ("model-input", "T1"), ("model-input", "T2"),
        ("model-output", "T1"), ("model-output", "T2"),
        ("tag-anomaly-scaled", "T1"), ("tag-anomaly-scaled", "T2"),
        ("total-anomaly-scaled", ""),
    ]  # fmt: skip
    values = {column: [1 / 3 + 10 * i + j for j in range(rows)] for i, column in enumerate(columns)}
    frame = pd.DataFrame(values, index=index)
    frame[("start", "")] = index
    frame[("end", "")] = index + timedelta(minutes=10)
    frame.columns = pd.MultiIndex.from_tuples(frame.columns)
    return frame


def expected_points(frame: pd.DataFrame, model: str, **extra: str) -> set[tuple[Any, ...]]:
    """The points gordo-client's forwarder writes for ``frame``: (measurement, tags, ns, value)."""
    points = set()
    for group, tag in frame.columns:
        if group in ("start", "end"):
            continue
        for moment, value in frame[(group, tag)].items():
            if math.isfinite(value):
                tags = tuple(sorted({"machine": model, "sensor_name": tag or group, **extra}.items()))
                points.add((group, tags, pd.Timestamp(moment).value, value))
    return points


# the columns of ``SELECT *`` that are not tags
NOT_TAGS = frozenset({"_measurement", "time", "sensor_value"})


def stored_points(server: InfluxServer, database: str) -> set[tuple[Any, ...]]:
    rows = server.points('SELECT * FROM /.*/', database)
    points = set()
    for row in rows:
        tags = tuple(sorted((k, v) for k, v in row.items() if k not in NOT_TAGS and v is not None))
        points.add((row["_measurement"], tags, row["time"], row["sensor_value"]))
    return points


def count_points(server: InfluxServer, database: str) -> int:
    rows = server.points('SELECT COUNT(*) FROM /.*/', database)
    return sum(value for row in rows for key, value in row.items() if key.startswith("count"))


# ---------------------------------------------------------------- sensors


def test_sensor_values_read_back_exactly(influx_server: InfluxServer, influx_database: str) -> None:
    frame = pd.DataFrame(
        {
            "T1": [1 / 3, -0.0, 1e-300, 1e20, 2.5, 7.0],
            "T2": [np.nan, 2.0, np.nan, 4.0, 5.0, np.inf],
            ODD_TAG: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        },
        index=times(6),
    )
    sensors = sensors_for(influx_server.url, influx_database)
    assert sensors.write(frame) == 6 + 3 + 6

    answer = sensors.data(["T1", "T2", ODD_TAG, "NO-DATA"], T0, T0 + timedelta(hours=1))

    expected = frame.replace(np.inf, np.nan)
    expected.index = expected.index.as_unit("ns")
    pd.testing.assert_frame_equal(answer, expected, check_exact=True, check_freq=False)
    assert isinstance(answer.index, pd.DatetimeIndex) and str(answer.index.tz) == "UTC"
    assert answer.index.name == "time" and answer.index.is_monotonic_increasing
    assert list(answer.dtypes) == [np.float64] * 3
    assert "NO-DATA" not in answer.columns
    sensors.close()


def test_two_series_of_one_tag_at_one_instant_count_as_their_mean(
    influx_server: InfluxServer, influx_database: str
) -> None:
    """An extra tag key on some points makes a second series of the same sensor; GROUP BY the
    sensor's tag merges them, with two values at the same instants."""
    ns = [pd.Timestamp(moment).value for moment in times(3)]
    influx_server.write(
        "\n".join(
            [f"sensors,tag=T1 value={1.0 + i} {t}" for i, t in enumerate(ns)]
            + [f"sensors,tag=T1,source=backup value={3.0 + i} {t}" for i, t in enumerate(ns[:2])]
            + [f"sensors,tag=T2 value=7 {t}" for t in ns]
        ),
        influx_database,
    )
    sensors = sensors_for(influx_server.url, influx_database)
    got = sensors.data(["T1", "T2"], T0, T0 + timedelta(hours=1))
    assert list(got.index) == list(times(3).tz_localize(None).tz_localize("UTC")) and not got.index.has_duplicates
    assert got["T1"].tolist() == [2.0, 3.0, 3.0]  # (1+3)/2, (2+4)/2, and 3 alone
    assert got["T2"].tolist() == [7.0, 7.0, 7.0]
    sensors.close()


def test_range_is_half_open(influx_server: InfluxServer, influx_database: str) -> None:
    start, end = T0, T0 + timedelta(minutes=30)
    tick = timedelta(microseconds=1)
    moments = [start - tick, start, end - tick, end]
    sensors = sensors_for(influx_server.url, influx_database)
    sensors.write(pd.DataFrame({"T1": [1.0, 2.0, 3.0, 4.0]}, index=pd.DatetimeIndex(moments)))

    answer = sensors.data(["T1"], start, end)

    assert list(answer.index) == [pd.Timestamp(start), pd.Timestamp(end - tick)]
    assert answer["T1"].tolist() == [2.0, 3.0]


def test_no_data_gives_an_empty_frame(influx_server: InfluxServer, influx_database: str) -> None:
    answer = sensors_for(influx_server.url, influx_database).data(["T1"], T0, T0 + timedelta(hours=1))

    assert answer.empty and list(answer.columns) == []
    assert isinstance(answer.index, pd.DatetimeIndex) and str(answer.index.tz) == "UTC"
    assert answer.index.name == "time"


def test_range_query_names_the_measurement_and_quotes_tags() -> None:
    sensors = sensors_for("http://127.0.0.1:1", "db", measurement="plant data", tag_key="tag", field="value")

    query = sensors.range_query(["T1", ODD_TAG], T0, T0 + timedelta(minutes=30))

    assert query == (
        'SELECT "value" FROM "plant data" '
        'WHERE ("tag" = \'T1\' OR "tag" = \'it\\\'s "odd", a=b \\\\ tag\\\\1\') '
        "AND time >= '2024-01-01T00:00:00Z' AND time < '2024-01-01T00:30:00Z' GROUP BY \"tag\""
    )


def test_a_tag_name_cannot_widen_the_query(influx_server: InfluxServer, influx_database: str) -> None:
    sensors = sensors_for(influx_server.url, influx_database)
    sensors.write(pd.DataFrame({"T1": [1.0], "T2": [2.0], INJECTION: [3.0]}, index=times(1)))
    end = T0 + timedelta(hours=1)

    rows = influx_server.points(sensors.range_query(["T1", INJECTION], T0, end), influx_database)

    assert sorted((row["tag"], row["value"]) for row in rows) == [("T1", 1.0), (INJECTION, 3.0)]
    # a line break cannot end the string literal either
    assert influx_server.points(sensors.range_query(["T1\n"], T0, end), influx_database) == []


def test_custom_measurement_tag_key_and_field(influx_server: InfluxServer, influx_database: str) -> None:
    names = {"measurement": 'plant data, "raw"', "tag_key": "sensor name", "field": "val=ue"}
    sensors = sensors_for(influx_server.url, influx_database, **names)
    sensors.write(pd.DataFrame({"A": [1.0, 2.0], ODD_TAG: [3.0, 4.0]}, index=times(2)))

    answer = sensors.data(["A", ODD_TAG], T0, T0 + timedelta(hours=1))

    assert answer.to_dict("list") == {"A": [1.0, 2.0], ODD_TAG: [3.0, 4.0]}
    assert sensors.sensors() == sorted(["A", ODD_TAG])


def test_sensors_and_exists(influx_server: InfluxServer, influx_database: str) -> None:
    sensors = sensors_for(influx_server.url, influx_database)
    assert sensors.sensors() == []
    sensors.write(pd.DataFrame({"T2": [1.0], "T1": [2.0], ODD_TAG: [3.0]}, index=times(1)))

    assert sensors.sensors() == sorted(["T1", "T2", ODD_TAG])
    assert sensors.exists("T1") and sensors.exists(ODD_TAG)
    assert not sensors.exists("T3") and not sensors.exists(INJECTION)


def test_sensor_writes_go_in_batches(
    influx_server: InfluxServer, influx_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sensors_influx, "WRITE_BATCH", 7)
    posts = count_posts(monkeypatch)
    sensors = sensors_for(influx_server.url, influx_database)

    assert sensors.write(pd.DataFrame({"T1": np.arange(25.0)}, index=times(25))) == 25

    assert len(posts) == 4
    assert count_points(influx_server, influx_database) == 25


def test_long_answers_arrive_in_chunks(
    influx_server: InfluxServer, influx_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(influx_http, "QUERY_CHUNK", 3)
    sensors = sensors_for(influx_server.url, influx_database)
    sensors.write(pd.DataFrame({"T1": np.arange(10.0), "T2": -np.arange(10.0)}, index=times(10)))

    answer = sensors.data(["T1", "T2"], T0, T0 + timedelta(days=1))

    assert answer["T1"].tolist() == list(np.arange(10.0))
    assert answer["T2"].tolist() == list(-np.arange(10.0))


def test_hundreds_of_tags_in_one_query(influx_server: InfluxServer, influx_database: str) -> None:
    tags = [f"PLANT-A.AREA-{i:04d}.SENSOR-WITH-A-LONG-NAME-{i}" for i in range(500)]
    sensors = sensors_for(influx_server.url, influx_database)
    sensors.write(pd.DataFrame([np.arange(500.0)], columns=tags, index=times(1)))

    answer = sensors.data(tags, T0, T0 + timedelta(hours=1))

    assert list(answer.columns) == tags
    assert answer.iloc[0].tolist() == list(np.arange(500.0))


def test_naive_times_are_refused(influx_server: InfluxServer, influx_database: str) -> None:
    sensors = sensors_for(influx_server.url, influx_database)
    naive = datetime(2024, 1, 1)
    with pytest.raises(ValueError, match="naive"):
        sensors.range_query(["T1"], naive, naive + timedelta(hours=1))
    with pytest.raises(ValueError, match="naive"):
        sensors.write(pd.DataFrame({"T1": [1.0]}, index=pd.DatetimeIndex([naive])))


def test_unwritable_names_are_refused(influx_server: InfluxServer, influx_database: str) -> None:
    sensors = sensors_for(influx_server.url, influx_database)
    for name in ("ends in backslash\\", "two\nlines"):
        with pytest.raises(PermanentError, match="line protocol"):
            sensors.write(pd.DataFrame({name: [1.0]}, index=times(1)))


# ---------------------------------------------------------------- predictions


def test_predictions_use_gordo_clients_layout(influx_server: InfluxServer, influx_database: str) -> None:
    answer = gordo_answer()
    storage = predictions_for(influx_server.url, influx_database, extra_tags={"site": "north sea, A"})

    assert storage.store("demo", "m3", "1700000000", SPAN, answer) == 7 * 4

    measurements = influx_server.points("SHOW MEASUREMENTS", influx_database)
    assert sorted(row["name"] for row in measurements) == [
        "model-input", "model-output", "tag-anomaly-scaled", "total-anomaly-scaled",
    ]  # fmt: skip
    for row in influx_server.points("SHOW TAG KEYS", influx_database):
        assert row["tagKey"] in {"machine", "sensor_name", "site"}
    fields = influx_server.points("SHOW FIELD KEYS", influx_database)
    assert {(row["fieldKey"], row["fieldType"]) for row in fields} == {("sensor_value", "float")}
    totals = influx_server.points(
        'SHOW TAG VALUES FROM "total-anomaly-scaled" WITH KEY = "sensor_name"', influx_database
    )
    assert [row["value"] for row in totals] == ["total-anomaly-scaled"]
    assert stored_points(influx_server, influx_database) == expected_points(answer, "m3", site="north sea, A")


def test_outputs_stores_only_the_chosen_groups_and_still_clears_the_others(
    influx_server: InfluxServer, influx_database: str
) -> None:
    answer = gordo_answer()
    predictions_for(influx_server.url, influx_database).store("demo", "m3", "1", SPAN, answer)
    chosen = predictions_for(influx_server.url, influx_database, outputs=["total-anomaly-scaled"])

    assert chosen.store("demo", "m3", "1", SPAN, answer) == len(answer), "one total per time"

    measurements = influx_server.points("SHOW MEASUREMENTS", influx_database)
    points = {row["name"]: influx_server.points(f'SELECT * FROM "{row["name"]}"', influx_database) for row in measurements}
    assert {name for name, found in points.items() if found} == {"total-anomaly-scaled"}


def test_project_tag_is_optional(influx_server: InfluxServer, influx_database: str) -> None:
    storage = predictions_for(influx_server.url, influx_database, project_tag="project")
    storage.store("demo", "m3", "1", SPAN, gordo_answer())

    expected = expected_points(gordo_answer(), "m3", project="demo")
    assert stored_points(influx_server, influx_database) == expected


def test_storing_twice_leaves_one_copy(influx_server: InfluxServer, influx_database: str) -> None:
    storage = predictions_for(influx_server.url, influx_database)
    answer = gordo_answer()
    storage.store("demo", "m3", "1", SPAN, answer)
    storage.store("demo", "m3", "1", SPAN, answer)
    assert count_points(influx_server, influx_database) == 7 * 4

    # a redelivered task at a newer revision overwrites the same points
    changed = answer.copy()
    changed[("model-output", "T1")] = 42.0
    storage.store("demo", "m3", "2", SPAN, changed)
    assert count_points(influx_server, influx_database) == 7 * 4
    assert stored_points(influx_server, influx_database) == expected_points(changed, "m3")


def test_a_store_replaces_the_models_points_in_its_span_and_nothing_else(
    influx_server: InfluxServer, influx_database: str
) -> None:
    storage = predictions_for(influx_server.url, influx_database, extra_tags={"site": "a"})
    other_site = predictions_for(influx_server.url, influx_database, extra_tags={"site": "b"})
    answer = gordo_answer(rows=6)
    storage.store("demo", "m3", "1", SPAN, answer)
    storage.store("demo", "other", "1", SPAN, answer)
    other_site.store("demo", "m3", "1", SPAN, answer)
    influx_server.write(f"unrelated,machine=m3 sensor_value=1 {pd.Timestamp(T0).value}", influx_database)

    # the new run of [T0 + 20 min, T0 + 60 min) has two of its four rows, and one group fewer
    span = Window(T0 + timedelta(minutes=20), T0 + timedelta(minutes=60))
    again = gordo_answer(rows=6).iloc[[3, 4]].drop(columns=[("tag-anomaly-scaled", "T1"), ("tag-anomaly-scaled", "T2")])
    storage.store("demo", "m3", "2", span, again)

    site_a = {point for point in stored_points(influx_server, influx_database) if ("site", "a") in point[1]}
    mine = {point for point in site_a if ("machine", "m3") in point[1]}
    assert mine == expected_points(answer.iloc[[0, 1]], "m3", site="a") | expected_points(again, "m3", site="a")
    assert site_a - mine == expected_points(answer, "other", site="a")
    site_b = {point for point in stored_points(influx_server, influx_database) if ("site", "b") in point[1]}
    assert site_b == expected_points(answer, "m3", site="b")
    assert influx_server.points('SELECT * FROM "unrelated"', influx_database)  # not a Gordo output: left alone

    # storing nothing clears the span; doing it again changes nothing
    for _ in range(2):
        storage.store("demo", "m3", "3", span, answer.iloc[0:0])
        mine = {p for p in stored_points(influx_server, influx_database) if {("site", "a"), ("machine", "m3")} <= set(p[1])}
        assert mine == expected_points(answer.iloc[[0, 1]], "m3", site="a")


def test_nan_and_infinite_values_are_skipped(influx_server: InfluxServer, influx_database: str) -> None:
    answer = gordo_answer()
    answer.iloc[0, 2] = np.nan  # ("model-output", "T1") at T0
    answer.iloc[1, 6] = np.inf  # ("total-anomaly-scaled", "") at T0 + 10 min
    storage = predictions_for(influx_server.url, influx_database)

    assert storage.store("demo", "m3", "1", SPAN, answer) == 7 * 4 - 2

    stored = stored_points(influx_server, influx_database)
    assert stored == expected_points(answer, "m3")
    # the rows' other values are kept
    assert sum(1 for point in stored if point[2] == pd.Timestamp(T0).value) == 7 - 1


def test_all_nan_predictions_write_nothing(influx_server: InfluxServer, influx_database: str) -> None:
    answer = gordo_answer()
    answer.loc[:, answer.columns[:7]] = np.nan
    storage = predictions_for(influx_server.url, influx_database)

    assert storage.store("demo", "m3", "1", SPAN, answer) == 0
    assert storage.store("demo", "m3", "1", SPAN, answer.iloc[0:0]) == 0
    assert count_points(influx_server, influx_database) == 0


def test_predictions_go_in_batches(
    influx_server: InfluxServer, influx_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    posts = count_posts(monkeypatch)
    storage = predictions_for(influx_server.url, influx_database, batch_size=5)

    storage.store("demo", "m3", "1", SPAN, gordo_answer())

    assert len(posts) == math.ceil(7 * 4 / 5)
    assert count_points(influx_server, influx_database) == 7 * 4


def test_lines_are_built_one_batch_at_a_time() -> None:
    produced = []

    def lines():
        for number in range(12):
            produced.append(number)
            yield f"m v={number} {number}"

    batches = influx_http._batches(lines(), 5)
    assert next(batches) == [f"m v={n} {n}" for n in range(5)]
    assert len(produced) == 5  # the rest is not built before it is sent
    assert [len(batch) for batch in batches] == [5, 2]


def test_float_lines_skip_what_influxdb_cannot_hold() -> None:
    suffixes = influx_http.time_suffixes(np.array([1, 2, 3, 4], dtype=np.int64))
    values = np.array([0.1 + 0.2, np.nan, np.inf, -5e-324])
    assert list(influx_http.float_lines("m,t=a", "v", values, suffixes)) == [
        "m,t=a v=0.30000000000000004 1",
        "m,t=a v=-5e-324 4",
    ]


def test_a_missing_database_is_created_on_first_write(influx_server: InfluxServer) -> None:
    database = f"created_{time.time_ns()}"
    try:
        storage = predictions_for(influx_server.url, database)
        assert storage.store("demo", "m3", "1", SPAN, gordo_answer()) == 7 * 4
        assert count_points(influx_server, database) == 7 * 4
    finally:
        influx_server.query(f'DROP DATABASE "{database}"')


def test_predictions_need_an_aware_index(influx_server: InfluxServer, influx_database: str) -> None:
    answer = gordo_answer()
    answer.index = answer.index.tz_localize(None)
    with pytest.raises(PermanentError, match="UTC"):
        predictions_for(influx_server.url, influx_database).store("demo", "m3", "1", SPAN, answer)


def test_extra_tags_cannot_replace_the_layouts_tags() -> None:
    with pytest.raises(ValueError, match="machine"):
        predictions_for("http://127.0.0.1:1", "db", extra_tags={"machine": "other"})


# ---------------------------------------------------------------- errors by class


def every_call(url: str, database: str = "db", **timeouts: float) -> list[Any]:
    """One call of each kind that reaches the server."""
    sensors = sensors_for(url, database, **timeouts)
    storage = predictions_for(url, database, **timeouts)
    frame = pd.DataFrame({"T1": [1.0]}, index=times(1))
    return [
        lambda: sensors.data(["T1"], T0, T0 + timedelta(hours=1)),
        sensors.sensors,
        lambda: sensors.exists("T1"),
        lambda: sensors.write(frame),
        lambda: storage.store("demo", "m3", "1", SPAN, gordo_answer()),
    ]


def test_a_stopped_server_is_transient(tmp_path: Any) -> None:
    server = InfluxServer(tmp_path).start()
    server.stop()
    for call in every_call(server.url, connect_timeout=1.0):
        with pytest.raises(TransientError, match="127.0.0.1"):
            call()


def test_a_server_that_never_answers_is_transient() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # accepts connections (in the backlog) but never reads or answers
        url = "http://127.0.0.1:%d" % listener.getsockname()[1]
        for call in every_call(url, connect_timeout=1.0, read_timeout=0.2):
            began = time.monotonic()
            with pytest.raises(TransientError, match="timed out"):
                call()
            assert time.monotonic() - began < 3


def test_reading_a_missing_database_is_permanent(influx_server: InfluxServer) -> None:
    sensors = sensors_for(influx_server.url, "no_such_database")
    for call in (lambda: sensors.data(["T1"], T0, T0 + timedelta(hours=1)), sensors.sensors):
        with pytest.raises(PermanentError, match="database not found"):
            call()


def test_a_rejected_write_is_permanent(influx_server: InfluxServer, influx_database: str) -> None:
    influx_server.write(f"sensors,tag=T1 value=1i {pd.Timestamp(T0).value}", influx_database)
    sensors = sensors_for(influx_server.url, influx_database)
    with pytest.raises(PermanentError, match="HTTP 400: partial write: field type conflict"):
        sensors.write(pd.DataFrame({"T1": [1.5]}, index=times(1)))


def test_a_bad_query_is_permanent(influx_server: InfluxServer, influx_database: str) -> None:
    http = InfluxHttp(InfluxSensorsConfig(type="influx", url=influx_server.url, database=influx_database), "sensor store")
    with pytest.raises(PermanentError, match="HTTP 400: error parsing query"):
        http.query("SELEC nothing")


@pytest.mark.parametrize(
    ("status", "content_type", "error"),
    [
        (503, "application/json", TransientError),  # InfluxDB overloaded or restarting
        (500, "text/html", TransientError),
        (429, "application/json", TransientError),  # rate limited by a gateway
        (401, "application/json", PermanentError),  # bad credentials
        (200, "text/html", PermanentError),  # a proxy's login page
    ],
)
def test_foreign_answers_by_class(status: int, content_type: str, error: type[Exception]) -> None:
    with CannedServer(status, content_type) as url:
        for call in every_call(url):
            with pytest.raises(error):
                call()


# ---------------------------------------------------------------- helpers


def count_posts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size (in lines) of every POST to /write."""
    posts: list[int] = []
    original = InfluxHttp._post_lines

    def counting(self: InfluxHttp, body: bytes) -> None:
        posts.append(body.count(b"\n") + 1)
        original(self, body)

    monkeypatch.setattr(InfluxHttp, "_post_lines", counting)
    return posts


class _Canned(BaseHTTPRequestHandler):
    status = 200
    content_type = "text/html"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        body = b'{"error": "canned"}' if "json" in self.content_type else b"<html>login</html>"
        self.send_response(self.status)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class CannedServer:
    """A tiny HTTP server on 127.0.0.1 answering every request with one canned status."""

    def __init__(self, status: int, content_type: str) -> None:
        handler = type("Handler", (_Canned,), {"status": status, "content_type": content_type})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.01,), daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        return "http://127.0.0.1:%d" % self._server.server_address[1]

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.mark.parametrize("kind", ["drip_headers", "cut_headers"])
@pytest.mark.parametrize("route", ["/query", "/write"])
def test_an_influxdb_that_drips_or_cuts_its_headers_is_transient_within_the_call_limit(
    influx_server: InfluxServer, influx_database: str, kind: str, route: str
) -> None:
    """A header byte every 0.3 s (each read within the 1 s read timeout), or half a header
    and a closed connection, in front of the real InfluxDB: the call ends within connect +
    read timeout (2 s) as a transient error, reading sensors and storing predictions alike."""
    from tests.fault_proxy import FaultProxy, always

    with FaultProxy(influx_server.url, always(kind, only=route)) as proxy:
        sensors = sensors_for(proxy.url, influx_database, connect_timeout=1, read_timeout=1)
        storage = predictions_for(proxy.url, influx_database, connect_timeout=1, read_timeout=1)
        calls = {"read": lambda: sensors.data(["T1"], T0, T0 + timedelta(hours=1)),
                 "store": lambda: storage.store("demo", "m3", "1", SPAN, gordo_answer())}
        # a read is one /query; a store a DELETE (/query), then /write
        faulted = {"read", "store"} if route == "/query" else {"store"}
        for name, call in calls.items():
            started = time.monotonic()
            if name in faulted:
                expected = "no complete answer" if kind == "drip_headers" else "broke off in its headers"
                with pytest.raises(TransientError, match=expected):
                    call()
            else:
                call()
            assert time.monotonic() - started < 3.5
        assert kind in proxy.kinds()
