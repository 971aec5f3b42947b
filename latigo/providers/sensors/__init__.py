"""Sensor information and sensor data: where the models' input comes from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import datetime

import pandas as pd


class SensorInformationProvider(ABC):
    """Which sensors the store knows: ``latigo sensors`` checks each model's tags against it
    (latigo.sensorcheck), since a tag the store lacks gives windows without data and no reason."""

    @abstractmethod
    def sensors(self) -> list[str]:
        """Every sensor tag with data."""

    @abstractmethod
    def exists(self, tag: str) -> bool:
        """Whether ``tag`` has any data."""


class SensorDataProvider(ABC):
    """Reads sensor values for a time range."""

    @abstractmethod
    def range_query(self, tags: Sequence[str], start: datetime, end: datetime) -> str:
        """The query ``data`` runs, in the store's own language: for logs and for operators
        who want to run it by hand."""

    @abstractmethod
    def data(self, tags: Sequence[str], start: datetime, end: datetime) -> pd.DataFrame:
        """Values in ``[start, end)``: a UTC DatetimeIndex named ``time``, one float column per
        tag that has data (tags without data are absent, not empty), sorted by time."""

    @abstractmethod
    def write(self, frame: pd.DataFrame) -> int:
        """Store values laid out as ``data`` returns them; idempotent. Production stores are
        fed by others: this is for the demo feeder and the tests."""

    def probe(self) -> None:
        """Raise unless the store answers now: asked while it seems down for everyone."""

    def close(self) -> None:
        """Release connections."""
