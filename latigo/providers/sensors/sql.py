"""Sensor data in the Latigo database (table ``sensor_data``: tag, time, value): the
embedded default, fed by the demo and by anyone who can write rows."""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from latigo import db
from latigo.providers.sensors import SensorDataProvider, SensorInformationProvider
from latigo.schema import sensor_data


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

    def _query(self, tags: Sequence[str], start: datetime, end: datetime):
        return (
            select(sensor_data.c.time, sensor_data.c.tag, sensor_data.c.value)
            .where(sensor_data.c.tag.in_(list(tags)), sensor_data.c.time >= start, sensor_data.c.time < end)
            .order_by(sensor_data.c.time)
        )

    def range_query(self, tags: Sequence[str], start: datetime, end: datetime) -> str:
        statement = self._query(tags, start, end)
        return str(statement.compile(self._engine, compile_kwargs={"literal_binds": True}))

    def data(self, tags: Sequence[str], start: datetime, end: datetime) -> pd.DataFrame:
        with _available(), self._engine.connect() as connection:
            rows = connection.execute(self._query(tags, start, end)).all()
        if not rows:
            return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time"), dtype="float64")
        # column by column: pandas reads SQLAlchemy Row objects one slow element at a time
        times, tags_, values = zip(*rows)
        long = pd.DataFrame(
            {"time": pd.DatetimeIndex(times).tz_convert("UTC"), "tag": tags_, "value": np.array(values, dtype="float64")}
        )
        wide = long.pivot_table(index="time", columns="tag", values="value", aggfunc="last", dropna=False)
        wide.columns.name = None
        return wide.astype("float64").sort_index()

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


def _available():
    return db.translate_outage("sensor store")
