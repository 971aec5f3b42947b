"""Prediction storage: where Gordo's answers end up."""

from __future__ import annotations

from abc import ABC, abstractmethod

import pandas as pd


class PredictionStorageProvider(ABC):
    """Stores predictions idempotently: storing the same rows twice leaves one copy, so a
    redelivered task never duplicates data."""

    @abstractmethod
    def store(self, project: str, model: str, revision: str, predictions: pd.DataFrame) -> int:
        """Store Gordo's answer (two-level columns, UTC index) for one model; return the
        number of values written."""

    def close(self) -> None:
        """Release connections."""
