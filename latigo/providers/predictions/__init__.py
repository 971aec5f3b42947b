"""Prediction storage: where Gordo's answers end up."""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime

import pandas as pd

from latigo.window import Window


class PredictionStorageProvider(ABC):
    """Stores a model's predictions for a span of time, replacing what was there.

    A window predicted again (a backfill with ``--mode all``, a replayed dead letter, a new
    revision, data that arrived late) must end up with exactly the new run's rows: a row of
    the earlier run that the new one did not produce (computed across a gap since filled, or
    at a time the new revision cannot predict) would otherwise stay beside the new ledger
    state. Storing the same predictions twice leaves one copy, so a redelivered task never
    duplicates data, and a store interrupted half way is repaired by storing again."""

    @abstractmethod
    def store(self, project: str, model: str, revision: str, span: Window, predictions: pd.DataFrame) -> int:
        """Replace the model's predictions in ``span`` by ``predictions`` (Gordo's answer:
        two-level columns, UTC index, every row inside ``span``; empty to remove them all);
        return the number of values written."""

    def prepare(self, now: datetime) -> None:
        """Make ready what storing the coming windows needs (PostgreSQL's time partitions),
        so continuous stores never wait on it; asked by the leading scheduler every tick."""

    def expire(self, project: str, model: str, before: datetime) -> int:
        """Delete some of the model's predictions older than ``before`` (``predictions.retention``),
        a bounded amount per call, and return how many; 0 when none is left. A store whose
        server expires points itself applies its policy here and deletes nothing."""
        return 0

    def probe(self) -> None:
        """Raise unless the store answers now: asked while it seems down for everyone."""

    def close(self) -> None:
        """Release connections."""
