"""The SQL prediction store's row layout, as pure functions (no I/O).

One row per (time, output group) holds the group's values at that time as one blob of
little-endian float64, one per tag, in the order of the group's tags. The tags are kept
once per model and revision (table ``prediction_tags``), sorted by name, so a revision's
order never depends on the column order of one answer. A 20-tag model's 30-minute window
is 24 rows and about 2.5 kB of values, where one row per value made 309 rows
(bench/README.md, "The prediction store's layout").
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

# how values are packed: float64, little-endian whatever the machine, NaN kept as NaN
VALUE_TYPE = np.dtype("<f8")
# the long form every reader gets: one row per value
VALUE_COLUMNS = ["project", "model", "time", "output", "tag", "value", "revision"]


@dataclass(frozen=True)
class Group:
    """One output group of an answer: its tags (sorted) and their values, a row per time."""

    output: str
    tags: tuple[str, ...]
    values: np.ndarray

    def blobs(self) -> list[bytes]:
        """The group's values at each time, packed."""
        packed = np.ascontiguousarray(self.values, dtype=VALUE_TYPE)
        return [row.tobytes() for row in packed]


def groups(series: Sequence[tuple[str, str]], values: np.ndarray) -> list[Group]:
    """Group the (output, tag) columns of ``frames.output_series`` by output, in the order
    the outputs first appear, each group's tags sorted."""
    positions: dict[str, list[int]] = {}
    for position, (output, _) in enumerate(series):
        positions.setdefault(output, []).append(position)
    found = []
    for output, columns in positions.items():
        ordered = sorted(columns, key=lambda position: series[position][1])
        tags = tuple(series[position][1] for position in ordered)
        if len(set(tags)) != len(tags):
            raise ValueError(f"output {output!r} names a tag twice: {sorted(tags)}")
        found.append(Group(output, tags, values[:, ordered]))
    return found


def encode_tags(tags: Sequence[str]) -> str:
    return json.dumps(list(tags), ensure_ascii=False)


def decode_tags(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def unpack(blob: bytes, tags: Sequence[str]) -> np.ndarray:
    """A row's values; a blob that does not hold one value per tag is corrupt, never guessed at."""
    values = np.frombuffer(blob, dtype=VALUE_TYPE)
    if len(values) != len(tags):
        raise ValueError(f"a prediction row holds {len(values)} values for {len(tags)} tags")
    return values


def long_form(rows: Iterable[Sequence], tags: dict[tuple[str, str, str, str], tuple[str, ...]]) -> pd.DataFrame:
    """Rows of (project, model, time, output, revision, tag_values) as one row per value
    (``VALUE_COLUMNS``), NaN where Gordo gave none; ``tags`` by (project, model, revision,
    output). A row whose tags are unknown is an error: its values could not be named, and
    so is a blob that does not hold one value per tag. The blobs are unpacked in one call
    and the key columns repeated by numpy, so a read costs little Python per row."""
    rows = list(rows)
    names: list[tuple[str, ...]] = []
    for project, model, _time, output, revision, _blob in rows:
        try:
            names.append(tags[(project, model, revision, output)])
        except KeyError:
            raise ValueError(f"no tags recorded for {project}/{model} revision {revision} output {output}") from None
    counts = np.fromiter((len(group) for group in names), dtype=np.int64, count=len(rows))
    sizes = np.fromiter((len(row[5]) for row in rows), dtype=np.int64, count=len(rows))
    if np.any(sizes != counts * VALUE_TYPE.itemsize):
        wrong = int(np.flatnonzero(sizes != counts * VALUE_TYPE.itemsize)[0])
        raise ValueError(
            f"a prediction row holds {sizes[wrong] // VALUE_TYPE.itemsize} values for {counts[wrong]} tags"
        )
    columns: dict[str, object] = {}
    for position, name in enumerate(("project", "model", "time", "output", "revision")):
        keys = np.empty(len(rows), dtype=object)
        keys[:] = [row[position] for row in rows]
        columns[name] = np.repeat(keys, counts)
    columns["tag"] = [tag for group in names for tag in group]
    columns["value"] = np.frombuffer(b"".join(row[5] for row in rows), dtype=VALUE_TYPE).copy()
    return pd.DataFrame(columns, columns=VALUE_COLUMNS)
