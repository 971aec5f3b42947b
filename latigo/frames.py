"""Pure data shaping between sensor stores, Gordo and prediction stores (no I/O).

Gordo answers with two-level columns: (group, tag) for per-tag outputs such as
("tag-anomaly-scaled", "TAG-1"), and (group, "") for totals such as
("total-anomaly-scaled", ""). Storage wants one value per (time, output, tag); following
gordo-client's InfluxDB layout, a total's tag is its group name.
"""

from __future__ import annotations

from datetime import datetime

import numpy as np
import pandas as pd

from latigo.providers.models import ModelMetadata
from latigo.window import Window

# Gordo's bookkeeping columns, not predictions
NON_OUTPUT_GROUPS = frozenset({"start", "end"})


def data_start(window_start: datetime, metadata: ModelMetadata, margin: int) -> datetime:
    """Where to start reading sensor data so that Gordo's first answered row is at or before
    ``window_start``: windowed models drop ``offset`` rows, and a ``margin`` of extra rows
    covers resampling edges."""
    return window_start - metadata.resolution * (metadata.offset + margin)


def needed_tags(metadata: ModelMetadata) -> list[str]:
    """The model's input tags, then any target tags that are not inputs."""
    return list(dict.fromkeys(metadata.tags + metadata.target_tags))


def missing_tags(raw: pd.DataFrame, metadata: ModelMetadata) -> list[str]:
    return [tag for tag in needed_tags(metadata) if tag not in raw.columns]


def to_model_input(raw: pd.DataFrame, metadata: ModelMetadata) -> pd.DataFrame:
    """Resample raw sensor values onto the model's resolution (mean per bucket, left-labelled,
    as Gordo's own dataset does), in the model's tag order. Buckets where a tag has no finite
    value are dropped: Gordo answers NaN input with a 500."""
    values = raw.loc[:, needed_tags(metadata)].astype("float64")
    values = values.replace([np.inf, -np.inf], np.nan)
    values = values[~values.index.duplicated(keep="last")].sort_index()
    resampled = values.resample(metadata.resolution, label="left", closed="left", origin="epoch").mean()
    return resampled.dropna(how="any")


def inside(frame: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The rows of ``frame`` whose time lies in ``window``."""
    return frame[(frame.index >= window.start) & (frame.index < window.end)]


def to_long(predictions: pd.DataFrame) -> pd.DataFrame:
    """Gordo's wide answer as rows of (time, output, tag, value)."""
    keep = [column for column in predictions.columns if column[0] not in NON_OUTPUT_GROUPS]
    wide = predictions.loc[:, keep]
    times = wide.index.repeat(len(keep))
    outputs = np.tile([group for group, _ in keep], len(wide))
    tags = np.tile([tag or group for group, tag in keep], len(wide))
    values = wide.to_numpy(dtype="float64", na_value=np.nan).reshape(-1)
    return pd.DataFrame({"time": times, "output": outputs, "tag": tags, "value": values})

