"""Model information and model execution: what Gordo serves, and running it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import timedelta

import pandas as pd


@dataclass(frozen=True)
class ModelMetadata:
    """What Latigo needs to know of one model at one revision to predict with it."""

    project: str
    model: str
    revision: str
    tags: tuple[str, ...]
    target_tags: tuple[str, ...]
    resolution: timedelta
    # rows Gordo drops from the start of its answer (windowed models such as LSTMs)
    offset: int = 0
    # the fewest rows Gordo accepts in one call: an LSTM needs more than its lookback window
    # (an autoencoder's offset is one less than its lookback, a forecast's equal to it)
    min_rows: int = 1

    def __post_init__(self) -> None:
        if self.min_rows <= self.offset:
            object.__setattr__(self, "min_rows", self.offset + 1)

    @property
    def lookback(self) -> int:
        """Rows a stored prediction needs before it in its run: the offset, or one less than
        the fewest rows of a call if that is more, so that whether a row is predicted never
        depends on which later rows were sent with it."""
        return max(self.offset, self.min_rows - 1)


class ModelInformationProvider(ABC):
    """Which models exist, at which revision, and what they need."""

    @abstractmethod
    def latest_revision(self, project: str) -> str:
        """The revision new windows are predicted with."""

    @abstractmethod
    def models(self, project: str, revision: str | None = None) -> list[str]:
        """The models that were built, at ``revision`` or the latest one."""

    @abstractmethod
    def expected_models(self, project: str) -> list[str]:
        """The models the project's config asked for; those missing from ``models`` failed to build."""

    @abstractmethod
    def metadata(self, project: str, model: str, revision: str) -> ModelMetadata:
        """Tags, target tags, resolution and offset of one model."""


class ModelExecutionProvider(ABC):
    """Runs a model over sensor data."""

    @abstractmethod
    def predict(self, metadata: ModelMetadata, X: pd.DataFrame, y: pd.DataFrame) -> pd.DataFrame:
        """Gordo's answer for the rows of ``X`` (one contiguous run): float columns on two
        levels (group, tag) such as ("tag-anomaly-scaled", "TAG-1") or ("total-anomaly-scaled",
        ""), a UTC index. Gordo's bookkeeping columns ``start`` and ``end`` are not kept: the
        index says as much. An answer that does not fit the model (groups, tags, times) is a
        PermanentError: nothing of it may be stored."""

    def probe(self) -> None:
        """Raise unless the model server answers now (as a whole, not one model)."""

    def close(self) -> None:
        """Release connections."""
