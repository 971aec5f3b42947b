"""Pure data shaping between sensor stores, Gordo and prediction stores (no I/O).

Gordo answers with two-level columns: (group, tag) for per-tag outputs such as
("tag-anomaly-scaled", "TAG-1"), and (group, "") for totals such as
("total-anomaly-scaled", ""). Storage wants one value per (time, output, tag); following
gordo-client's InfluxDB layout, a total's tag is its group name.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from latigo.providers.models import ModelMetadata
from latigo.window import Window

# Gordo's bookkeeping columns, not predictions
NON_OUTPUT_GROUPS = frozenset({"start", "end"})


def data_start(window_start: datetime, metadata: ModelMetadata, margin: int) -> datetime:
    """Where to start reading sensor data so that the first row of the window can be
    predicted: windowed models need ``lookback`` rows before it, and a ``margin`` of extra
    rows covers resampling edges. On a resolution step, so the first bucket is whole."""
    return _step_floor(window_start, metadata.resolution) - metadata.resolution * (metadata.lookback + margin)


def data_end(window_end: datetime, metadata: ModelMetadata) -> datetime:
    """Where to stop reading: the end of the last resolution bucket that starts in the window,
    so that bucket is the mean of all its samples however the windows are grouped into tasks
    (a resolution need not divide the window interval)."""
    floor = _step_floor(window_end, metadata.resolution)
    return floor if floor == window_end else floor + metadata.resolution


def _step_floor(moment: datetime, step: timedelta) -> datetime:
    """The latest multiple of ``step`` since the epoch at or before ``moment`` (Gordo's and
    ``to_model_input``'s buckets lie on that grid)."""
    epoch = datetime(1970, 1, 1, tzinfo=moment.tzinfo)
    return epoch + (moment - epoch) // step * step


def needed_tags(metadata: ModelMetadata) -> list[str]:
    """The model's input tags, then any target tags that are not inputs."""
    return list(dict.fromkeys(metadata.tags + metadata.target_tags))


def missing_tags(raw: pd.DataFrame, metadata: ModelMetadata) -> list[str]:
    return [tag for tag in needed_tags(metadata) if tag not in raw.columns]


def missing_per_window(raw: pd.DataFrame, tags: Sequence[str], windows: Sequence[Window]) -> list[list[str]]:
    """For each window, the tags of ``tags`` without a single value in it (all of them: no
    data at all). Decided window by window, never over the whole read, so a window's outcome
    is the same whichever task it is in and however far the read reaches around it."""
    times = epoch_ns(raw.index)
    order = np.argsort(times, kind="stable")
    # one pass over the frame: a tag it has no column for is absent everywhere
    has = raw.reindex(columns=list(tags)).notna().to_numpy(dtype=np.int64)
    counts = np.vstack([np.zeros((1, len(tags)), dtype=np.int64), np.cumsum(has[order], axis=0)])
    sorted_times = times[order]
    edges = [(_ns_of(window.start), _ns_of(window.end)) for window in windows]
    found = []
    for start, end in edges:
        first, last = np.searchsorted(sorted_times, [start, end])
        present = counts[last] - counts[first]
        found.append([tag for tag, count in zip(tags, present) if count == 0])
    return found


def _ns_of(moment: datetime) -> int:
    return int(pd.Timestamp(moment).value)


def pivot(times: np.ndarray, tags: Sequence[str], values: np.ndarray, wanted: Sequence[str]) -> pd.DataFrame:
    """Long samples (naive UTC time, tag, value) as sensor data: one float column per tag of
    ``wanted`` that has samples, in tag order, a UTC index named ``time``, sorted.

    Several samples of one tag at one instant (InfluxDB keeps one series per tag set, so an
    extra tag key on some points makes a second series of the same sensor) count as their
    mean, whatever order the store returns them in. Values pass as they are (NaN, inf):
    ``to_model_input`` decides what is missing."""
    wanted = sorted(set(wanted))
    position = {tag: number for number, tag in enumerate(wanted)}
    codes = np.fromiter((position[tag] for tag in tags), dtype=np.intp, count=len(tags))
    instants, rows = np.unique(times, return_inverse=True)
    cells = rows * len(wanted) + codes
    size = len(instants) * len(wanted)
    counts = np.bincount(cells, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        sums = np.bincount(cells, weights=values, minlength=size)
        matrix = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan).reshape(len(instants), len(wanted))
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
    step = step_ns(metadata.resolution)
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


def step_ns(resolution: timedelta) -> int:
    """A resolution in nanoseconds, exactly."""
    return resolution // timedelta(microseconds=1) * 1000


def utc_of(ns: int) -> datetime:
    """An aware UTC datetime from nanoseconds since the epoch."""
    return pd.Timestamp(ns, tz="UTC").to_pydatetime()


def empty_frame() -> pd.DataFrame:
    """No rows on a UTC time index: the model input or predictions of a task without data
    (storing it clears the task's span)."""
    return pd.DataFrame(index=pd.DatetimeIndex([], tz="UTC"), dtype="float64")


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


def check_inside(frame: pd.DataFrame, window: Window) -> None:
    """Refuse rows outside ``window``: a store replaces exactly its span, so a row outside
    it would survive the next replacement of its own window's span as a stale row."""
    if len(frame) and not (frame.index.min() >= window.start and frame.index.max() < window.end):
        raise ValueError(f"predictions from {frame.index.min()} to {frame.index.max()} do not lie in {window}")


def _inside(index: pd.Index, window: Window) -> slice | np.ndarray:
    """Where the rows in ``window`` are: a slice of a sorted index (what Gordo answers and
    ``to_model_input`` makes), the positions otherwise."""
    times = epoch_ns(index)
    start, end = (int(pd.Timestamp(moment).value) for moment in (window.start, window.end))
    if index.is_monotonic_increasing:
        return slice(int(np.searchsorted(times, start, "left")), int(np.searchsorted(times, end, "left")))
    return np.flatnonzero((times >= start) & (times < end))


def output_series(
    predictions: pd.DataFrame, outputs: Collection[str] | None = None
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Gordo's wide answer as storage sees it: the (output, tag) of each prediction column,
    a total's tag being its group name as in gordo-client, and the values, one row per time
    and one column per series (NaN where Gordo gave none). With ``outputs``
    (``predictions.outputs``), only those groups."""
    keep = [
        position
        for position, (group, _) in enumerate(predictions.columns)
        if group not in NON_OUTPUT_GROUPS and (outputs is None or group in outputs)
    ]
    series = [(group, tag or group) for group, tag in predictions.columns[keep]]
    kept = predictions if len(keep) == predictions.shape[1] else predictions.iloc[:, keep]
    return series, kept.to_numpy(dtype="float64", na_value=np.nan)
