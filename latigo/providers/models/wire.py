"""Gordo's prediction wire format, both ways: pure functions of frames and bytes (no I/O).

Requests: Gordo takes X and y as JSON or as parquet files. Its cost per request is mostly
fixed, and for the few rows of a continuous window JSON is the cheaper of the two on both
sides; for longer frames parquet wins by more and more (JSON parsing in Gordo is per row),
so frames above ``JSON_MAX_ROWS`` travel as parquet. The two give identical answers.

Answers: always parquet (``?format=parquet``: Gordo's JSON answers cost it more). An answer
is mostly per-column metadata; reading it with pyarrow alone and building the frame from its
columns is quicker than ``pandas.read_parquet``, which rebuilds the two-level column index
from the pandas metadata on every call.

The measurements behind both choices: bench/README.md, "Figures behind the code".
"""

from __future__ import annotations

import ast
import json
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from latigo.errors import PermanentError
from latigo.frames import NON_OUTPUT_GROUPS, epoch_ns
from latigo.providers.models import ModelMetadata

# the groups Gordo's /prediction endpoint answers for every model
PREDICTION_GROUPS = ("model-input", "model-output")
# the groups its /anomaly/prediction endpoint adds for every anomaly model (thresholds add
# anomaly-confidence and total-anomaly-confidence, all_columns the smooth-* ones)
ANOMALY_GROUPS = (
    *PREDICTION_GROUPS,
    "tag-anomaly-scaled",
    "tag-anomaly-unscaled",
    "total-anomaly-scaled",
    "total-anomaly-unscaled",
)
# frames with at most this many rows are sent as JSON, longer ones as parquet (the crossover
# measured against Gordo 6.0.4: bench/README.md, "Figures behind the code")
JSON_MAX_ROWS = 200


def request_body(X: pd.DataFrame, y: pd.DataFrame) -> dict[str, Any]:
    """The keyword arguments of the ``requests`` call that sends X and y: a JSON body for
    short frames of finite values, parquet files otherwise."""
    if len(X) <= JSON_MAX_ROWS and _finite(X) and (y is X or _finite(y)):
        columns = _json_columns(X)
        targets = columns if y is X else _json_columns(y)  # y is X itself for most anomaly models
        body = json.dumps({"X": columns, "y": targets}, allow_nan=False)
        return {"data": body.encode(), "headers": {"Content-Type": "application/json"}}
    return {"files": {"X": ("X", to_parquet(X)), "y": ("y", to_parquet(y))}}


def _finite(frame: pd.DataFrame) -> bool:
    return bool(np.isfinite(frame.to_numpy(dtype="float64")).all())


def _json_columns(frame: pd.DataFrame) -> dict[str, dict[str, float]]:
    """``{tag: {ISO time: value}}``, the layout Gordo's ``dataframe_from_dict`` reads; Python's
    float repr round-trips every value exactly."""
    instants = epoch_ns(frame.index).view("datetime64[ns]")
    times = [f"{text}+00:00" for text in np.datetime_as_string(instants, unit="us")]
    return {str(tag): dict(zip(times, frame[tag].tolist())) for tag in frame.columns}


def to_parquet(frame: pd.DataFrame) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=True), sink)
    return sink.getvalue().to_pybytes()


def read_answer(body: bytes) -> pd.DataFrame:
    """Gordo's parquet answer as a float frame: two-level columns (group, tag) in Gordo's
    order, without Gordo's bookkeeping ``start`` and ``end`` (the index says as much); a UTC
    DatetimeIndex. Anything else raises PermanentError: a bad answer is not retried."""
    try:
        table = pq.ParquetFile(pa.BufferReader(body)).read(use_threads=False)
    except Exception as error:  # pyarrow raises several unrelated types for bad bytes
        raise PermanentError(f"answer is not parquet: {error}") from None
    names = tuple(table.column_names)
    index_name = _index_column(table, names)
    index = table.column(index_name)
    if not pa.types.is_timestamp(index.type):
        raise PermanentError(f"answer is not a prediction table: its index is {index.type}, not time")
    columns, positions = _output_columns(names, index_name)
    arrays = [table.column(position).to_numpy() for position in positions]
    values = np.column_stack(arrays) if arrays else np.empty((table.num_rows, 0))
    if values.dtype.kind not in "fiub":
        raise PermanentError(f"answer is not a prediction table: a non-numeric output column ({values.dtype})")
    times = pd.DatetimeIndex(index.to_numpy().astype("datetime64[ns]")).tz_localize("UTC")
    return pd.DataFrame(values.astype("float64", copy=False), index=times, columns=columns, copy=False)


def _index_column(table: pa.Table, names: tuple[str, ...]) -> str:
    """The column pandas stored the index in, as its metadata names it."""
    metadata = (table.schema.metadata or {}).get(b"pandas")
    try:
        (name,) = json.loads(metadata or b"{}")["index_columns"]
    except (TypeError, ValueError, KeyError):
        raise PermanentError("answer is not a prediction table: it has no single time index") from None
    if not isinstance(name, str) or name not in names:
        raise PermanentError("answer is not a prediction table: it has no single time index")
    return name


@lru_cache(maxsize=4096)
def _output_columns(names: tuple[str, ...], index_name: str) -> tuple[pd.MultiIndex, tuple[int, ...]]:
    """The (group, tag) output columns and their positions among the table's ``names``
    (pandas writes the two levels as the text of a tuple: ``"('model-input', 'TAG-1')"``).
    Every answer of a model has the same columns, so this is worked out once per model."""
    kept: list[tuple[str, str]] = []
    positions: list[int] = []
    for position, name in enumerate(names):
        if name == index_name:
            continue
        try:
            column = ast.literal_eval(name)
        except (ValueError, SyntaxError):
            column = None
        if not (isinstance(column, tuple) and len(column) == 2 and all(isinstance(part, str) for part in column)):
            raise PermanentError(f"answer is not a prediction table: column {name[:80]!r} is not (group, tag)")
        if column[0] not in NON_OUTPUT_GROUPS:
            kept.append(column)
            positions.append(position)
    return pd.MultiIndex.from_tuples(kept, names=[None, None]), tuple(positions)


def check_answer(answer: pd.DataFrame, metadata: ModelMetadata, asked: pd.DatetimeIndex, anomaly: bool) -> None:
    """Raise PermanentError naming what differs when ``answer`` is not a prediction of this
    model for the rows ``asked``: a promised group missing, a per-tag group whose tags are
    not the model's (Gordo matches columns by position when names differ, so wrong names
    would be stored under the wrong sensors), a total with more than one column, or times
    that were not asked for."""
    groups: dict[str, list[str]] = {}
    for group, tag in answer.columns:
        groups.setdefault(group, []).append(tag)
    missing = [group for group in (ANOMALY_GROUPS if anomaly else PREDICTION_GROUPS) if group not in groups]
    if missing:
        raise PermanentError(f"the answer lacks the groups {', '.join(missing)}")
    for group, tags in groups.items():
        if "total-" in group:
            if tags != [""]:
                raise PermanentError(f"the answer's {group} has columns {tags[:5]!r}, not one total")
            continue
        if group == "model-output" and not anomaly:
            continue  # a plain model may output anything (a transformer's components "0", "1", ...)
        wanted = metadata.tags if group == "model-input" else metadata.target_tags
        if sorted(tags) != sorted(wanted):
            unknown = sorted(set(tags) - set(wanted))
            absent = sorted(set(wanted) - set(tags))
            raise PermanentError(
                f"the answer's {group} tags differ from the model's: "
                f"not the model's {unknown[:5]!r}, missing {absent[:5]!r}"
                + (" (a tag twice)" if not unknown and not absent else "")
            )
    times = epoch_ns(answer.index)
    if len(times) > 1 and not (np.diff(times) > 0).all():
        raise PermanentError("the answer's times are not strictly increasing")
    outside = ~np.isin(times, epoch_ns(asked))
    if outside.any():
        first = answer.index[np.flatnonzero(outside)[0]]
        raise PermanentError(
            f"the answer has {int(outside.sum())} rows at times not asked for, first {first.isoformat()}"
        )
