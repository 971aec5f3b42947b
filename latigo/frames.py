"""Pure data shaping between sensor stores, Gordo and prediction stores (no I/O).

Gordo answers with two-level columns: (group, tag) for per-tag outputs such as
("tag-anomaly-scaled", "TAG-1"), and (group, "") for totals such as
("total-anomaly-scaled", ""). Storage wants one value per (time, output, tag); following
gordo-client's InfluxDB layout, a total's tag is its group name.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence

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


def pivot(times: np.ndarray, tags: Sequence[str], values: np.ndarray, wanted: Sequence[str]) -> pd.DataFrame:
    """Long samples (naive UTC time, tag, value) as sensor data: one float column per tag of
    ``wanted`` that has samples, in tag order, a UTC index named ``time``, sorted; of two
    samples of one tag and time the later one wins."""
    wanted = sorted(set(wanted))
    position = {tag: number for number, tag in enumerate(wanted)}
    codes = np.fromiter((position[tag] for tag in tags), dtype=np.intp, count=len(tags))
    instants, rows = np.unique(times, return_inverse=True)
    matrix = np.full((len(instants), len(wanted)), np.nan)
    matrix[rows, codes] = values
    present = np.zeros(len(wanted), dtype=bool)
    present[codes] = True
    index = pd.DatetimeIndex(instants.astype("datetime64[ns]"), name="time").tz_localize("UTC")
    return pd.DataFrame(matrix[:, present], index=index, columns=[tag for tag, has in zip(wanted, present) if has])


def to_model_input(raw: pd.DataFrame, metadata: ModelMetadata) -> pd.DataFrame:
    """Resample raw sensor values onto the model's resolution (mean per bucket, left-labelled,
    buckets aligned to the epoch, as Gordo's own dataset does), in the model's tag order.
    Infinite values count as missing; of samples with the same time the last delivered one
    counts. Buckets where a tag has no finite value are dropped: Gordo answers NaN input with
    a 500.

    Plain numpy on sorted times: this runs for every window, and pandas' ``resample`` costs
    more than a whole SQL read of a continuous window."""
    tags = needed_tags(metadata)
    values = raw.loc[:, tags].to_numpy(dtype="float64", copy=True)
    values[~np.isfinite(values)] = np.nan
    times = epoch_ns(raw.index)
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    if len(times):
        last = np.append(times[1:] != times[:-1], True)  # the last delivered of equal times
        times, values = times[last], values[last]
    step = metadata.resolution // timedelta(microseconds=1) * 1000
    buckets = times // step
    firsts = np.flatnonzero(np.append(True, buckets[1:] != buckets[:-1])) if len(buckets) else buckets
    present = ~np.isnan(values)
    if len(firsts):
        sums = np.add.reduceat(np.where(present, values, 0.0), firsts, axis=0)
        counts = np.add.reduceat(present, firsts, axis=0)
    else:
        sums = counts = np.empty((0, len(tags)))
    complete = (counts > 0).all(axis=1)
    index = pd.DatetimeIndex(buckets[firsts][complete] * step, name=raw.index.name).tz_localize("UTC")
    return pd.DataFrame(sums[complete] / counts[complete], index=index, columns=tags)


def epoch_ns(index: pd.Index) -> np.ndarray:
    """Nanoseconds since the epoch of an aware DatetimeIndex (pandas 3 indexes may hold s, ms
    or us)."""
    if not isinstance(index, pd.DatetimeIndex):
        raise TypeError(f"times need a DatetimeIndex, not {type(index).__name__}")
    if index.tz is None:
        raise ValueError("naive timestamps: the index needs a time zone (UTC)")
    return index.tz_convert("UTC").as_unit("ns").asi8


def to_model_target(X: pd.DataFrame, metadata: ModelMetadata) -> pd.DataFrame:
    """The target columns of the model input: ``X`` itself when the model's targets are its
    inputs, as for most of Gordo's anomaly models."""
    targets = list(metadata.target_tags)
    return X if targets == list(X.columns) else X.loc[:, targets]


def inside(frame: pd.DataFrame, window: Window) -> pd.DataFrame:
    """The rows of ``frame`` whose time lies in ``window``."""
    return frame.iloc[_inside(frame.index, window)]


def any_inside(frame: pd.DataFrame, window: Window) -> bool:
    selected = _inside(frame.index, window)
    return selected.stop > selected.start if isinstance(selected, slice) else len(selected) > 0


def _inside(index: pd.Index, window: Window) -> slice | np.ndarray:
    """Where the rows in ``window`` are: a slice of a sorted index (what Gordo answers and
    ``to_model_input`` makes), the positions otherwise."""
    times = epoch_ns(index)
    start, end = (int(pd.Timestamp(moment).value) for moment in (window.start, window.end))
    if index.is_monotonic_increasing:
        return slice(int(np.searchsorted(times, start, "left")), int(np.searchsorted(times, end, "left")))
    return np.flatnonzero((times >= start) & (times < end))


def output_series(predictions: pd.DataFrame) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Gordo's wide answer as storage sees it: the (output, tag) of each prediction column,
    a total's tag being its group name as in gordo-client, and the values, one row per time
    and one column per series (NaN where Gordo gave none)."""
    keep = [position for position, (group, _) in enumerate(predictions.columns) if group not in NON_OUTPUT_GROUPS]
    series = [(group, tag or group) for group, tag in predictions.columns[keep]]
    outputs = predictions if len(keep) == predictions.shape[1] else predictions.iloc[:, keep]
    return series, outputs.to_numpy(dtype="float64", na_value=np.nan)
