"""Sensor data in the Latigo database (table ``sensor_data``: tag, time, value): the
embedded default, fed by the demo and by anyone who can write rows."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import DateTime, Engine, String, func, select, type_coerce

from latigo import db, frames
from latigo.outages import SENSOR_STORE
from latigo.providers.sensors import SensorDataProvider, SensorInformationProvider
from latigo.schema import sensor_data

# rows fetched and turned into arrays at a time
READ_BATCH = 10_000


class SqlSensors(SensorInformationProvider, SensorDataProvider):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def sensors(self) -> list[str]:
        with _available(), self._engine.connect() as connection:
            return list(connection.execute(select(sensor_data.c.tag).distinct().order_by(sensor_data.c.tag)).scalars())

    def exists(self, tag: str) -> bool:
        query = select(sensor_data.c.tag).where(sensor_data.c.tag == tag).limit(1)
        with _available(), self._engine.connect() as connection:
            return connection.execute(query).first() is not None

    def _query(self, tags: Sequence[str], start: datetime, end: datetime, time_column=sensor_data.c.time):
        # no ORDER BY: the primary key (tag, time) serves the range per tag, and data() sorts
        return select(time_column, sensor_data.c.tag, sensor_data.c.value).where(
            sensor_data.c.tag.in_(list(tags)), sensor_data.c.time >= start, sensor_data.c.time < end
        )

    def range_query(self, tags: Sequence[str], start: datetime, end: datetime) -> str:
        statement = self._query(tags, start, end)
        return str(statement.compile(self._engine, compile_kwargs={"literal_binds": True}))

    def data(self, tags: Sequence[str], start: datetime, end: datetime) -> pd.DataFrame:
        times: list[np.ndarray] = []
        names: list[str] = []
        values: list[np.ndarray] = []
        with _available(), self._engine.connect() as connection:
            result = connection.execute(self._query(tags, start, end, self._raw_time))
            # batch by batch into arrays, not as Python row objects all at once; no
            # server-side cursor (yield_per): bench/README.md, "Figures behind the code"
            for rows in result.partitions(READ_BATCH):
                batch_times, batch_names, batch_values = zip(*rows)
                times.append(_datetime64(batch_times))
                names.extend(batch_names)
                values.append(np.array(batch_values, dtype="float64"))
        if not names:
            return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time"), dtype="float64")
        return frames.pivot(np.concatenate(times), names, np.concatenate(values), list(tags))

    @property
    def _raw_time(self):
        """The time column as the driver hands it over, parsed in bulk by numpy: SQLite's
        text (SQLAlchemy would parse it row by row in Python; the column's CHECK keeps it in
        one form), PostgreSQL's ``timestamptz`` as naive UTC datetimes (without a zone object
        per row, whatever the session's TimeZone)."""
        if self._engine.dialect.name == "sqlite":
            return type_coerce(sensor_data.c.time, String()).label("time")
        return type_coerce(func.timezone("UTC", sensor_data.c.time), DateTime()).label("time")

    def probe(self) -> None:
        db.probe(self._engine)

    def write(self, frame: pd.DataFrame) -> int:
        long = frame.rename_axis("time").reset_index().melt(id_vars="time", var_name="tag", value_name="value")
        long = long.dropna(subset=["value"])
        times = pd.to_datetime(long["time"], utc=True).dt.to_pydatetime()
        rows = [
            {"tag": tag, "time": time, "value": float(value)}
            for tag, time, value in zip(long["tag"], times, long["value"])
        ]
        with _available(), self._engine.begin() as connection:
            return db.upsert(connection, sensor_data, rows)


def _available() -> AbstractContextManager[None]:
    return db.translate_outage(SENSOR_STORE)


def _datetime64(times: Sequence[str | datetime]) -> np.ndarray:
    """Naive UTC times as the driver gave them, in bulk: numpy parses SQLite's text, pandas
    converts PostgreSQL's datetimes, each the faster of the two (bench/README.md, "Figures
    behind the code")."""
    if isinstance(times[0], str):
        return np.array(times, dtype="datetime64[us]")
    return pd.DatetimeIndex(times).as_unit("us").to_numpy()
