"""Predictions in InfluxDB 1.x, laid out exactly as gordo-client's forwarder writes them.

Sites that ran ``gordo-client predict --influx-uri ...`` have dashboards reading its
layout, so Latigo writes the same points (gordo_client/forwarders.py,
``ForwardPredictionsIntoInflux``):

- one **measurement** per output group (``model-input``, ``model-output``,
  ``tag-anomaly-scaled``, ``total-anomaly-scaled``, ...; never ``start``/``end``);
- **tags** ``machine=<model>`` and ``sensor_name=<tag>`` (for a total such as
  ``total-anomaly-scaled`` the sensor_name is the group name, as in gordo-client, where
  pandas names the single column after its group), plus the configured ``extra_tags``
  (gordo-client's ``--metadata key,value``);
- one float **field** ``sensor_value``;
- **time** the row's timestamp, written with nanosecond precision as gordo-client's
  DataFrameClient does.

gordo-client writes neither the project nor the revision. The revision is deliberately
left out: a window re-predicted after Gordo rebuilt must overwrite the old point, not add a
second series. The project is written only when ``predictions.project_tag`` names a tag key
for it: two projects that share a database and a model name need it, or their points are
one series and a store of one replaces the other's.

A store replaces: it first deletes the model's points in the span from every output
measurement (with the same machine and extra tags, so another deployment's points in a
shared database are left alone), then writes. Repeating it is safe: InfluxDB keeps one
value per (measurement, tag set, field, time), and a store cut off between its delete and
its write leaves the task unacknowledged, so it is stored again.
"""

from __future__ import annotations

from datetime import datetime

import pandas as pd

from latigo.config import InfluxPredictionsConfig
from latigo.config.providers import OUTPUT_GROUPS
from latigo.errors import PermanentError
from latigo.frames import check_inside, epoch_ns, output_series
from latigo.outages import PREDICTION_STORE
from latigo.providers.influx import (
    InfluxHttp,
    escape_key,
    escape_measurement,
    float_lines,
    measurements_regex,
    quote_ident,
    quote_string,
    rfc3339,
    time_suffixes,
)
from latigo.providers.predictions import PredictionStorageProvider
from latigo.window import Window

# the tag holding the model's name, as gordo-client writes it
MACHINE_TAG = "machine"
# the tag holding the sensor (or, for totals, the group) name, as gordo-client writes it
SENSOR_TAG = "sensor_name"
# the one field of every point, as gordo-client writes it
VALUE_FIELD = "sensor_value"
# the retention policy predictions.retention makes the database's default
RETENTION_POLICY = "latigo"


class InfluxPredictions(PredictionStorageProvider):
    """Stores Gordo's answers in InfluxDB 1.x in gordo-client's layout, in batches of
    ``batch_size`` points.

    NaN and infinite values are skipped, not written: an InfluxDB field cannot hold them.
    (gordo-client drops every row that holds one; Latigo keeps the row's other values.)
    """

    def __init__(self, config: InfluxPredictionsConfig) -> None:
        reserved = {MACHINE_TAG, SENSOR_TAG} | ({config.project_tag} if config.project_tag else set())
        clashing = reserved & set(config.extra_tags)
        if clashing:
            raise ValueError(f"extra_tags must not set {', '.join(sorted(clashing))}: Latigo sets them")
        # predictions.project_tag, extra_tags and batch_size are read from here, the one path
        self._config = config
        self._http = InfluxHttp(config, PREDICTION_STORE)
        # whether predictions.retention is applied to the database (once per process)
        self._retention_applied = config.retention is None

    def store(self, project: str, model: str, revision: str, span: Window, predictions: pd.DataFrame) -> int:
        """Replace the model's points in ``span`` by every finite value of ``predictions``;
        return how many were written."""
        if not predictions.empty and (
            not isinstance(predictions.index, pd.DatetimeIndex) or predictions.index.tz is None
        ):
            raise PermanentError(f"predictions of {project}/{model} need a UTC DatetimeIndex")
        check_inside(predictions, span)
        common = {MACHINE_TAG: model, **self._config.extra_tags}
        if self._config.project_tag:
            common[self._config.project_tag] = project
        series, values = output_series(predictions, self._config.outputs)
        # every name is checked (escaped) before anything is deleted: a name line protocol
        # cannot carry must not leave the span emptied
        prefixes = [_series_key(output, {**common, SENSOR_TAG: tag}) for output, tag in series]
        # every group's points go, stored or not: a group left out since is not kept stale
        self._http.delete(self._deletes(common, span, {output for output, _ in series}))
        if predictions.empty:
            return 0
        # one series per output column, straight from the wide frame; the lines are built
        # batch by batch as they are written, so memory holds one batch, not the task's
        suffixes = time_suffixes(epoch_ns(predictions.index))
        lines = (
            line
            for position, prefix in enumerate(prefixes)
            for line in float_lines(prefix, VALUE_FIELD, values[:, position], suffixes)
        )
        return self._http.write(lines, self._config.batch_size)

    def expire(self, project: str, model: str, before: datetime) -> int:
        """InfluxDB expires points itself: make ``predictions.retention`` the database's
        default policy (once), delete nothing."""
        if not self._retention_applied:
            self._apply_retention()
            self._retention_applied = True
        return 0

    def _apply_retention(self) -> None:
        assert self._config.retention is not None
        hours = max(1, int(self._config.retention.total_seconds() // 3600))
        found = self._http.query(f"SHOW RETENTION POLICIES ON {quote_ident(self._http.database)}")
        known = {row[0] for series in found for row in series.get("values") or []}
        verb = "ALTER" if RETENTION_POLICY in known else "CREATE"
        self._http.command(
            f"{verb} RETENTION POLICY {quote_ident(RETENTION_POLICY)} ON {quote_ident(self._http.database)} "
            f"DURATION {hours}h{' REPLICATION 1' if verb == 'CREATE' else ''} DEFAULT"
        )

    @staticmethod
    def _deletes(tags: dict[str, str], span: Window, outputs: set[str]) -> str:
        """The DELETE of the points of these tags in ``span`` from every output measurement."""
        where = " AND ".join(
            [f"{quote_ident(key)} = {quote_string(value)}" for key, value in sorted(tags.items()) if value]
            + [f"time >= '{rfc3339(span.start)}'", f"time < '{rfc3339(span.end)}'"]
        )
        return f"DELETE FROM {measurements_regex(set(OUTPUT_GROUPS) | outputs)} WHERE {where}"

    def probe(self) -> None:
        self._http.ping()

    def close(self) -> None:
        self._http.close()


def _series_key(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,key=value,...`` with tags sorted by key (InfluxDB's own order, its fast
    path) and empty values left out (a tag cannot be empty; gordo-client drops them too)."""
    parts = [escape_measurement(measurement)]
    parts.extend(f"{escape_key(key, 'tag key')}={escape_key(value)}" for key, value in sorted(tags.items()) if value)
    return ",".join(parts)
