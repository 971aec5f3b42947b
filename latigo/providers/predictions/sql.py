"""Predictions in the Latigo database: table ``predictions``, one row per (project, model,
time, output group) with the group's values packed (latigo.providers.predictions.layout),
the tags of each group once per revision in ``prediction_tags``, and each group's name once
in ``prediction_outputs`` (a row holds its code).

A store deletes the model's rows in the span and upserts the new ones in one transaction:
readers see the old rows or the new ones, never a mix, and two executors storing the same
task at once (a redelivery while the first still runs) both end with one copy. Every
reader goes through :func:`read`, the one place that knows the layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta

import pandas as pd
from sqlalchemy import Connection, Engine, ScalarSelect, delete, func, select, tuple_

from latigo import db
from latigo.errors import PermanentError
from latigo.frames import check_inside, output_series
from latigo.outages import PREDICTION_STORE
from latigo.providers.predictions import PredictionStorageProvider, layout
from latigo.providers.predictions.partitions import AHEAD, Partitions, day_of
from latigo.schema import prediction_outputs, prediction_tags
from latigo.schema import predictions as predictions_table
from latigo.window import Window

# the most of one model's predictions one retention delete removes: a day of a 20-tag model
# is about 1,150 rows, one short transaction
EXPIRE_SLICE = timedelta(days=1)
# the most (project, model, revision, output) keys asked of prediction_tags in one query
TAGS_BATCH = 500

# the largest code predictions.output (a SMALLINT) holds
MAX_OUTPUT_CODE = 32767

# a group's tags, by (project, model, revision, output)
TagsByKey = dict[tuple[str, str, str, str], tuple[str, ...]]


class SqlPredictions(PredictionStorageProvider):
    def __init__(self, engine: Engine, outputs: Sequence[str] | None = None) -> None:
        self._engine = engine
        # predictions.outputs: the output groups stored (None: every group Gordo answers)
        self._outputs = outputs
        self._upsert = db.PreparedUpsert(engine, predictions_table)
        # the tags recorded in prediction_tags, as far as this process has seen
        self._tags: TagsByKey = {}
        # the output groups' codes, as far as this process has seen
        self._codes: dict[str, int] = {}
        # time partitions on PostgreSQL; SQLite's table is one
        self._partitions = Partitions(engine) if engine.dialect.name == "postgresql" else None
        # the day of the ``before`` whose whole expired partitions this process last dropped
        self._dropped_through: datetime | None = None

    def store(self, project: str, model: str, revision: str, span: Window, predictions: pd.DataFrame) -> int:
        check_inside(predictions, span)
        stale = delete(predictions_table).where(
            predictions_table.c.project == project,
            predictions_table.c.model == model,
            predictions_table.c.time >= span.start,
            predictions_table.c.time < span.end,
        )
        found = layout.groups(*output_series(predictions, self._outputs))
        with db.translate_outage(PREDICTION_STORE):
            self._record_tags(project, model, revision, found)
            if self._partitions is not None and found:
                self._partitions.ensure(span)
            bind = self._upsert.bind
            times = [bind("time", time) for time in predictions.index.to_pydatetime()]
            project_, model_, revision_ = bind("project", project), bind("model", model), bind("revision", revision)
            rows = [
                # in the table's column order
                (project_, model_, time, bind("output", self._codes[group.output]), revision_, bind("tag_values", blob))
                for group in found
                for time, blob in zip(times, group.blobs())
            ]
            with self._engine.begin() as connection:
                connection.execute(stale)
                self._upsert.execute(connection, rows)
        return sum(group.values.size for group in found)

    def _record_tags(self, project: str, model: str, revision: str, found: list[layout.Group]) -> None:
        """Each group's tags in prediction_tags, written by the first store of a revision. A
        revision whose tags change is refused (a permanent error): the stored values could
        no longer be named."""
        wanted = {(project, model, revision, group.output): group.tags for group in found}
        unseen = [key for key in wanted if key not in self._tags]
        new_outputs = {group.output for group in found} - self._codes.keys()
        if new_outputs:
            with self._engine.begin() as connection:
                self._codes.update(output_codes(connection, new_outputs))
        if unseen:
            names = ("project", "model", "revision", "output")
            rows = [dict(zip(names, key), tags=layout.encode_tags(wanted[key])) for key in unseen]
            with self._engine.begin() as connection:
                insert = db.dialect_insert(connection.dialect, prediction_tags).on_conflict_do_nothing()
                connection.execute(insert, rows)
                self._tags.update(tags_of(connection, unseen))
        for key, tags in wanted.items():
            if self._tags.get(key) != tags:
                raise PermanentError(
                    f"{project}/{model} revision {revision}: the tags of {key[3]} changed from "
                    f"{list(self._tags.get(key, ()))} to {list(tags)}"
                )

    def prepare(self, now: datetime) -> None:
        """Create the time partitions of the coming days (PostgreSQL)."""
        if self._partitions is not None:
            with db.translate_outage(PREDICTION_STORE):
                self._partitions.ensure(Window(now, now + AHEAD))

    def expire(self, project: str, model: str, before: datetime) -> int:
        """On PostgreSQL first drop the whole days older than ``before`` (every model's at
        once); then delete the model's oldest day of rows older than ``before`` (a seek on
        the primary key, then one bounded range), what is left of a partly expired day."""
        dropped = 0
        # a partition can only newly expire once ``before`` reaches another day
        if self._partitions is not None and day_of(before) != self._dropped_through:
            with db.translate_outage(PREDICTION_STORE):
                dropped = self._partitions.drop_expired(before)
            self._dropped_through = day_of(before)
        of_model = (predictions_table.c.project == project, predictions_table.c.model == model)
        with db.translate_outage(PREDICTION_STORE), self._engine.begin() as connection:
            oldest = connection.execute(select(func.min(predictions_table.c.time)).where(*of_model)).scalar()
            if oldest is None or oldest >= before:
                return dropped
            until = min(before, oldest + EXPIRE_SLICE)
            range_ = (predictions_table.c.time >= oldest, predictions_table.c.time < until)
            return dropped + connection.execute(delete(predictions_table).where(*of_model, *range_)).rowcount

    def probe(self) -> None:
        db.probe(self._engine)


def output_codes(connection: Connection, names: Iterable[str]) -> dict[str, int]:
    """The codes of these output groups, a name seen for the first time given the next code.
    Only names without a code are inserted: PostgreSQL spends a sequence value on every
    row an insert tries, conflicting or not. Stores that race for a new name agree on its
    code: the name is unique, the loser's insert does nothing and both read the winner's."""
    wanted = sorted(set(names))
    columns = prediction_outputs.c

    def known() -> dict[str, int]:
        query = select(columns.name, columns.code).where(columns.name.in_(wanted))
        return {name: code for name, code in connection.execute(query)}

    codes = known() if wanted else {}
    new = [name for name in wanted if name not in codes]
    if new:
        insert = db.dialect_insert(connection.dialect, prediction_outputs).on_conflict_do_nothing(
            index_elements=["name"]
        )
        connection.execute(insert, [{"name": name} for name in new])
        codes = known()
    full = sorted(name for name, code in codes.items() if code > MAX_OUTPUT_CODE)
    if full:
        raise PermanentError(f"output groups {full}: prediction_outputs has no code left (at most {MAX_OUTPUT_CODE})")
    return codes


def code_of(name: str) -> ScalarSelect:
    """SQL: the code of the output group ``name``, for a query of the predictions table."""
    return select(prediction_outputs.c.code).where(prediction_outputs.c.name == name).scalar_subquery()


def output_names(connection: Connection) -> dict[int, str]:
    """Every output group's name, by code: a few dozen rows at most."""
    columns = prediction_outputs.c
    return dict(connection.execute(select(columns.code, columns.name)).all())


def tags_of(connection: Connection, keys: Sequence[tuple[str, str, str, str]]) -> TagsByKey:
    """The recorded tags of these (project, model, revision, output) groups."""
    columns = prediction_tags.c
    found: TagsByKey = {}
    for start in range(0, len(keys), TAGS_BATCH):
        batch = list(keys[start : start + TAGS_BATCH])
        query = select(columns.project, columns.model, columns.revision, columns.output, columns.tags).where(
            tuple_(columns.project, columns.model, columns.revision, columns.output).in_(batch)
        )
        for project, model, revision, output, tags in connection.execute(query):
            found[(project, model, revision, output)] = layout.decode_tags(tags)
    return found


def read(
    engine: Engine,
    *,
    outputs: Sequence[str] = (),
    projects: Sequence[str] = (),
    model: str | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> pd.DataFrame:
    """Stored values, one row per value (``layout.VALUE_COLUMNS``), unordered.

    One model's, given its possible ``projects``, are found through the key, which leads
    with project and model; the output groups' over every model through the output-and-time
    index. The output is then matched as an expression no index serves: SQLite, without
    statistics, would take the output-and-time index and read every model's rows of the range.
    """
    columns = predictions_table.c
    query = select(columns.project, columns.model, columns.time, columns.output, columns.revision, columns.tag_values)
    with engine.connect() as connection:
        names = output_names(connection)
        asked = set(outputs)
        codes = [code for code, name in names.items() if name in asked]
        if outputs and not codes:
            return layout.long_form([], {})
        if model is not None and projects:
            query = query.where(columns.project.in_(list(projects)), columns.model == model)
            if codes:
                query = query.where((columns.output + 0).in_(codes))
        else:
            if codes:
                query = query.where(columns.output.in_(codes))
            if model is not None:
                query = query.where(columns.model == model)
        if start is not None:
            query = query.where(columns.time >= start)
        if end is not None:
            query = query.where(columns.time < end)
        try:
            rows = [
                (project, model_, time, names[code], revision, blob)
                for project, model_, time, code, revision, blob in connection.execute(query)
            ]
        except KeyError as unknown:
            raise ValueError(
                f"a prediction row has output code {unknown}, which prediction_outputs does not name"
            ) from None
        keys = sorted({(project, model_, revision, output) for project, model_, _, output, revision, _ in rows})
        tags = tags_of(connection, keys)
    return layout.long_form(rows, tags)
