"""Sensor data in InfluxDB 1.x.

Many Gordo sites keep their sensor values in InfluxDB 1.x: one measurement, the sensor's
name in a tag, the value in one field. This backend reads them with InfluxQL and, for the
demo feeder and the tests, writes them with line protocol (see ``latigo.providers.influx``
for the HTTP client and the quoting).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pandas as pd

from latigo import frames
from latigo.config import InfluxSensorsConfig
from latigo.errors import PermanentError
from latigo.frames import epoch_ns
from latigo.outages import SENSOR_STORE
from latigo.providers.influx import (
    InfluxHttp,
    escape_key,
    escape_measurement,
    float_lines,
    quote_ident,
    quote_string,
    rfc3339,
    time_suffixes,
)
from latigo.providers.sensors import SensorDataProvider, SensorInformationProvider

# lines per POST to /write when storing sensor values (the demo feeder and the tests)
WRITE_BATCH = 5_000


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC", name="time").as_unit("ns"), dtype="float64")


class InfluxSensors(SensorInformationProvider, SensorDataProvider):
    """Sensor values in one InfluxDB measurement: the sensor's name in tag ``tag_key``, its
    value in field ``field``."""

    def __init__(self, config: InfluxSensorsConfig) -> None:
        self._config = config
        self._http = InfluxHttp(config, SENSOR_STORE)
        self._measurement = quote_ident(config.measurement)
        self._tag_key = quote_ident(config.tag_key)
        self._field = quote_ident(config.field)

    def sensors(self) -> list[str]:
        statement = f"SHOW TAG VALUES FROM {self._measurement} WITH KEY = {self._tag_key}"
        return sorted(value for _key, value in self._tag_values(statement))

    def exists(self, tag: str) -> bool:
        statement = (
            f"SHOW TAG VALUES FROM {self._measurement} WITH KEY = {self._tag_key} "
            f"WHERE {self._tag_key} = {quote_string(tag)}"
        )
        return any(value == tag for _key, value in self._tag_values(statement))

    def _tag_values(self, statement: str) -> list[tuple[str, str]]:
        return [tuple(row) for series in self._http.query(statement) for row in series.get("values") or []]

    def range_query(self, tags: Sequence[str], start: datetime, end: datetime) -> str:
        if not tags:
            raise ValueError("no tags to query")
        wanted = " OR ".join(f"{self._tag_key} = {quote_string(tag)}" for tag in dict.fromkeys(tags))
        return (
            f"SELECT {self._field} FROM {self._measurement} WHERE ({wanted}) "
            f"AND time >= '{rfc3339(start)}' AND time < '{rfc3339(end)}' GROUP BY {self._tag_key}"
        )

    def data(self, tags: Sequence[str], start: datetime, end: datetime) -> pd.DataFrame:
        """The values of ``tags``; several points of one tag at one instant (in series that
        differ by another tag key, which GROUP BY the sensor's tag merges) count as their
        mean (see :func:`latigo.frames.pivot`)."""
        if not tags:
            return _empty_frame()
        times: list[int] = []
        names: list[str] = []
        values: list[object] = []
        for series in self._http.query(self.range_query(tags, start, end)):
            tag = (series.get("tags") or {}).get(self._config.tag_key)
            rows = series.get("values") or []
            if tag is None or not rows:
                continue
            times.extend(row[0] for row in rows)
            values.extend(row[1] for row in rows)
            names.extend([tag] * len(rows))
        if not names:
            return _empty_frame()
        try:
            numbers = np.array(values, dtype="float64")
        except (TypeError, ValueError) as error:
            raise PermanentError(f"InfluxDB field {self._config.field!r} is not numeric: {error}") from error
        instants = np.array(times, dtype="int64").astype("datetime64[ns]")
        return frames.pivot(instants, names, numbers, list(tags))

    def write(self, frame: pd.DataFrame) -> int:
        """Write a wide frame (UTC index, one column per tag) as points; NaN cells are skipped
        (an InfluxDB field cannot hold NaN). Returns the number of values written."""
        if not isinstance(frame.index, pd.DatetimeIndex):
            raise ValueError("the frame's index must be a DatetimeIndex")
        suffixes = time_suffixes(epoch_ns(frame.index))
        field = escape_key(self._config.field, "field")
        measurement = escape_measurement(self._config.measurement)
        tag_key = escape_key(self._config.tag_key, "tag key")
        prefixes = [f"{measurement},{tag_key}={escape_key(str(tag))}" for tag in frame.columns]
        values = frame.to_numpy(dtype="float64", na_value=math.nan)
        lines = (
            line
            for position, prefix in enumerate(prefixes)
            for line in float_lines(prefix, field, values[:, position], suffixes)
        )
        return self._http.write(lines, WRITE_BATCH)

    def probe(self) -> None:
        self._http.ping()

    def close(self) -> None:
        self._http.close()
