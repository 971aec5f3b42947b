"""The SQL prediction store's layout: packing (pure, with hypothesis), PostgreSQL's day
partitions (created on demand, ahead of time and once when racing; dropped whole by
retention), and migration 0013's conversion of the old one-row-per-value table, on a real
SQLite and a real PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, inspect, select, text

from alembic import command
from latigo import db
from latigo.providers.predictions import layout, partitions
from latigo.providers.predictions.partitions import PARTITION_SPAN, Partitions
from latigo.providers.predictions.sql import SqlPredictions, read
from latigo.schema import predictions
from latigo.window import Window

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
STEP = timedelta(minutes=10)
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def answer(start: datetime, count: int, tags: tuple[str, ...] = ("B", "A")) -> pd.DataFrame:
    """A Gordo-shaped answer: per-tag groups in the given tag order, and a total."""
    index = pd.date_range(start, periods=count, freq="10min", tz="UTC", name="time")
    columns = pd.MultiIndex.from_tuples(
        [("model-output", tag) for tag in tags]
        + [("tag-anomaly-scaled", tag) for tag in tags]
        + [("total-anomaly-scaled", "")]
    )
    values = np.arange(count * len(columns), dtype="float64").reshape(count, -1) + 0.25
    return pd.DataFrame(values, index=index, columns=columns)


# --- pure --------------------------------------------------------------------------------


@given(
    st.lists(st.sampled_from(["T1", "T2", "T3", "x", "É"]), min_size=1, max_size=5, unique=True),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=15, max_size=15),
)
def test_packing_keeps_every_value_and_names_it_by_sorted_tag(tags: list[str], numbers: list[float]) -> None:
    series = [("g", tag) for tag in tags]
    values = np.array(numbers[: 3 * len(tags)] + [0.0] * (3 * len(tags) - len(numbers[: 3 * len(tags)]))).reshape(3, -1)
    [group] = layout.groups(series, values)
    assert group.tags == tuple(sorted(tags))
    for row, blob in zip(values, group.blobs()):
        unpacked = layout.unpack(blob, group.tags)
        expected = [row[tags.index(tag)] for tag in group.tags]
        np.testing.assert_array_equal(unpacked, expected)


def test_a_blob_that_does_not_match_its_tags_is_an_error() -> None:
    with pytest.raises(ValueError, match="holds 2 values for 3 tags"):
        layout.unpack(np.zeros(2).tobytes(), ("a", "b", "c"))


@given(st.integers(0, 10**6), st.integers(1, 10**6))
def test_the_covering_partitions_hold_every_moment_of_a_span_and_no_more(start_minutes: int, length: int) -> None:
    span = Window(EPOCH + timedelta(minutes=start_minutes), EPOCH + timedelta(minutes=start_minutes + length))
    days = partitions.covering(span)
    assert days[0] <= span.start < days[0] + PARTITION_SPAN
    assert days[-1] < span.end <= days[-1] + PARTITION_SPAN
    assert all(later - earlier == PARTITION_SPAN for earlier, later in itertools.pairwise(days))
    assert all(partitions.day_named(partitions.name_of(day)) == day for day in days)


# --- on a real database ------------------------------------------------------------------


def partition_days(engine) -> list[datetime]:
    with engine.connect() as connection:
        return sorted(Partitions._existing(connection))


def test_a_store_across_midnight_reads_back_whatever_the_answers_column_order(database_url: str) -> None:
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    store = SqlPredictions(engine)
    span = Window(T0, T0 + timedelta(hours=4))  # 22:00 to 02:00
    frame = answer(T0, 24)

    assert store.store("p", "m", "1", span, frame) == 24 * 5
    assert store.store("p", "m", "1", span, frame[frame.columns[::-1]]) == 24 * 5  # same revision, other order

    stored = {
        (row.time, row.output, row.tag): row.value for row in read(engine, projects=["p"], model="m").itertuples()
    }
    expected = {
        (time, group, tag or group): frame.loc[time, (group, tag)]
        for time in frame.index
        for group, tag in frame.columns
    }
    assert stored == expected
    if engine.dialect.name == "postgresql":
        assert partition_days(engine) == [datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)]
    engine.dispose()


def stores_at_once(engine, span: Window, data: pd.DataFrame, stores: int = 4) -> list[BaseException]:
    """``stores`` stores of ``data`` (models m0, m1, ...), each by its own SqlPredictions in
    its own thread, released together by a barrier; what they raised."""
    barrier = threading.Barrier(stores)
    errors: list[BaseException] = []

    def store(model: str) -> None:
        try:
            barrier.wait()
            SqlPredictions(engine).store("p", model, "1", span, data)
        except BaseException as error:  # noqa: BLE001 - the test reports it
            errors.append(error)

    threads = [threading.Thread(target=store, args=(f"m{n}",)) for n in range(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_racing_stores_create_a_days_partition_once(postgres_url: str) -> None:
    engine = db.create_engine(postgres_url)
    db.upgrade(engine)
    start = datetime(2025, 6, 1, tzinfo=UTC)
    errors = stores_at_once(engine, Window(start, start + timedelta(hours=1)), answer(start, 6))

    assert errors == []
    assert partition_days(engine) == [start]
    assert len(read(engine, outputs=["total-anomaly-scaled"], start=start)) == 4 * 6
    engine.dispose()


def test_the_leader_creates_the_coming_days_and_retention_drops_whole_days(postgres_url: str) -> None:
    engine = db.create_engine(postgres_url)
    db.upgrade(engine)
    store = SqlPredictions(engine)
    now = datetime(2026, 3, 10, 12, 5, tzinfo=UTC)
    store.prepare(now)
    assert partition_days(engine) == [datetime(2026, 3, day, tzinfo=UTC) for day in (10, 11, 12)]

    start = now - timedelta(days=3)  # March 7, 12:05, to now
    store.store("p", "m", "1", Window(start, now), answer(start, 3 * 24 * 6))
    before = now - timedelta(days=2)  # March 8, 12:05
    expired = store.expire("p", "m", before)
    while (more := store.expire("p", "m", before)) > 0:
        expired += more

    with engine.connect() as connection:
        oldest, kept = connection.execute(select(func.min(predictions.c.time), func.count())).one()
    assert oldest.replace(tzinfo=UTC) >= before, "no row older than the retention"
    assert expired + kept == 3 * 24 * 6 * 3, "every row was either kept or counted as expired"
    assert partition_days(engine)[0] == datetime(2026, 3, 8, tzinfo=UTC), "March 7 went whole"
    engine.dispose()


def test_migration_0013_converts_the_old_rows_and_keeps_every_value(database_url: str) -> None:
    engine = db.create_engine(database_url)
    command.upgrade(db.alembic_config(engine), "0012")
    old = [
        ("p", "m", datetime(2026, 1, 1, 0, 0), "model-output", "B", 2.5, "1"),
        ("p", "m", datetime(2026, 1, 1, 0, 0), "model-output", "A", None, "1"),
        ("p", "m", datetime(2026, 1, 1, 0, 10), "model-output", "A", 4.0, "1"),
        ("p", "m", datetime(2026, 1, 2, 0, 10), "total-anomaly-scaled", "total-anomaly-scaled", 9.0, "2"),
        ("q", "n", datetime(2026, 1, 1, 0, 0), "model-output", "A", -1.0, "1"),
    ]
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO predictions (project, model, time, output, tag, value, revision) "
                "VALUES (:p, :m, :t, :o, :g, :v, :r)"
            ),
            [dict(zip("pmtogvr", row)) for row in old],
        )

    db.upgrade(engine)

    frame = read(engine)
    got = {
        (row.project, row.model, row.time.replace(tzinfo=None), row.output, row.tag): (
            None if np.isnan(row.value) else row.value,
            row.revision,
        )
        for row in frame.itertuples()
    }
    expected = {row[:5]: (row[5], row[6]) for row in old}
    # the one tag that had no row at 00:10 is NaN there, not lost and not invented
    expected[("p", "m", datetime(2026, 1, 1, 0, 10), "model-output", "B")] = (None, "1")
    assert got == expected
    assert "tag" not in {column["name"] for column in inspect(engine).get_columns("predictions")}
    engine.dispose()


def test_migration_0015_codes_every_output_and_downgrades_back(database_url: str) -> None:
    """Gordo's twelve groups get codes 1 to 12, a group only a newer Gordo answers the next;
    every value reads back the same, the row holds a two-byte code, and the downgrade gives
    the names back."""
    engine = db.create_engine(database_url)
    command.upgrade(db.alembic_config(engine), "0014")
    # rows as 0013's layout holds them (the store of today no longer writes names)
    rows = [
        {"m": "m", "t": (T0 + k * STEP).replace(tzinfo=None), "o": output, "v": np.array(values, "<f8").tobytes()}
        for k in range(3)
        for output, values in (("model-output", [k, 0.5]), ("future-group", [k, np.nan]), ("total-anomaly-scaled", [k]))
    ]
    tags = {"model-output": ["A", "B"], "future-group": ["A", "B"], "total-anomaly-scaled": ["total-anomaly-scaled"]}
    if engine.dialect.name == "postgresql":
        Partitions(engine).ensure(Window(T0, T0 + timedelta(days=2)))
    with engine.begin() as connection:
        connection.execute(
            text("INSERT INTO predictions (project, model, time, output, revision, tag_values) "
                 "VALUES ('p', :m, :t, :o, '1', :v)"), rows)  # fmt: skip
        connection.execute(
            text("INSERT INTO prediction_tags (project, model, revision, output, tags) VALUES ('p', 'm', '1', :o, :g)"),
            [{"o": output, "g": layout.encode_tags(names)} for output, names in tags.items()],
        )
        before = sorted(connection.execute(text("SELECT model, time, output, tag_values FROM predictions")).all())
    assert {row[2] for row in before} == {"model-output", "future-group", "total-anomaly-scaled"}

    command.upgrade(db.alembic_config(engine), "0015")
    with engine.connect() as connection:
        codes = dict(connection.execute(text("SELECT name, code FROM prediction_outputs")).all())
        after = sorted(connection.execute(text("SELECT model, time, output, tag_values FROM predictions")).all())
    assert codes["model-input"] == 1 and codes["model-output"] == 2 and codes["total-anomaly-scaled"] == 5
    assert codes["future-group"] == 13 and len(codes) == 13
    assert sorted((model, time, codes[output], blob) for model, time, output, blob in before) == after
    column = next(c for c in inspect(engine).get_columns("predictions") if c["name"] == "output")
    assert "SMALLINT" in str(column["type"]).upper()
    frame = read(engine, outputs=["future-group"])
    assert set(frame["output"]) == {"future-group"} and len(frame) == 3 * 2
    # a store after the migration gives a new group the next code, not one in use
    later = answer(T0 + timedelta(days=1), 3).rename(columns={"tag-anomaly-scaled": "newer-group"}, level=0)
    SqlPredictions(engine).store("p", "m", "1", Window(T0 + timedelta(days=1), T0 + timedelta(days=1, minutes=30)), later)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT code FROM prediction_outputs WHERE name = 'newer-group'")).scalar() == 14

    command.downgrade(db.alembic_config(engine), "0014")
    with engine.connect() as connection:
        restored = sorted(connection.execute(text("SELECT model, time, output, tag_values FROM predictions")).all())
    assert [row for row in restored if row[2] != "newer-group" and row[1] in {r[1] for r in before}] == before
    assert "newer-group" in {row[2] for row in restored}
    assert "prediction_outputs" not in inspect(engine).get_table_names()
    engine.dispose()


def test_stores_racing_for_a_new_output_group_agree_on_its_code(database_url: str) -> None:
    engine = db.create_engine(database_url)
    db.upgrade(engine)
    data = answer(T0, 3).rename(columns={"tag-anomaly-scaled": "racing-group"}, level=0)
    errors = stores_at_once(engine, Window(T0, T0 + 3 * STEP), data)
    assert not errors, errors
    with engine.connect() as connection:
        assert connection.execute(
            text("SELECT count(*) FROM prediction_outputs WHERE name = 'racing-group'")
        ).scalar() == 1
    frame = read(engine, outputs=["racing-group"])
    assert sorted(set(frame["model"])) == ["m0", "m1", "m2", "m3"] and len(frame) == 4 * 3 * 2
    engine.dispose()
