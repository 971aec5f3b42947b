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
second series. The project is written only when ``project_tag`` names a tag key for it
(useful when two projects share a database and a model name).

Idempotent by construction: InfluxDB keeps one value per (measurement, tag set, field,
time), so storing the same predictions again overwrites the points instead of adding any.
"""

from __future__ import annotations

import pandas as pd

from latigo.config import InfluxPredictionsConfig
from latigo.errors import PermanentError
from latigo.frames import epoch_ns, output_series
from latigo.providers.predictions import PredictionStorageProvider
from latigo.providers.influx import InfluxHttp, escape_key, escape_measurement, float_lines, time_suffixes

# the tag holding the model's name, as gordo-client writes it
MACHINE_TAG = "machine"
# the tag holding the sensor (or, for totals, the group) name, as gordo-client writes it
SENSOR_TAG = "sensor_name"
# the one field of every point, as gordo-client writes it
VALUE_FIELD = "sensor_value"


class InfluxPredictions(PredictionStorageProvider):
    """Stores Gordo's answers in InfluxDB 1.x in gordo-client's layout, in batches of
    ``batch_size`` points.

    NaN and infinite values are skipped, not written: an InfluxDB field cannot hold them.
    (gordo-client drops every row that holds one; Latigo keeps the row's other values.)
    """

    def __init__(self, config: InfluxPredictionsConfig, *, project_tag: str | None = None) -> None:
        reserved = {MACHINE_TAG, SENSOR_TAG} | ({project_tag} if project_tag else set())
        clashing = reserved & set(config.extra_tags)
        if clashing:
            raise ValueError(f"extra_tags must not set {', '.join(sorted(clashing))}: Latigo sets them")
        self._config = config
        self._project_tag = project_tag
        self._http = InfluxHttp(config)

    def store(self, project: str, model: str, revision: str, predictions: pd.DataFrame) -> int:
        """Write every finite value of ``predictions`` as one point; return how many were written."""
        if predictions.empty:
            return 0
        if not isinstance(predictions.index, pd.DatetimeIndex) or predictions.index.tz is None:
            raise PermanentError(f"predictions of {project}/{model} need a UTC DatetimeIndex")
        common = {MACHINE_TAG: model, **self._config.extra_tags}
        if self._project_tag:
            common[self._project_tag] = project
        # one series per output column, straight from the wide frame; the lines are built
        # batch by batch as they are written, so memory holds one batch, not the task's
        series, values = output_series(predictions)
        suffixes = time_suffixes(epoch_ns(predictions.index))
        prefixes = [_series_key(output, {**common, SENSOR_TAG: tag}) for output, tag in series]
        lines = (
            line
            for position, prefix in enumerate(prefixes)
            for line in float_lines(prefix, VALUE_FIELD, values[:, position], suffixes)
        )
        return self._http.write(lines, self._config.batch_size)

    def close(self) -> None:
        self._http.close()


def _series_key(measurement: str, tags: dict[str, str]) -> str:
    """``measurement,key=value,...`` with tags sorted by key (InfluxDB's own order, its fast
    path) and empty values left out (a tag cannot be empty; gordo-client drops them too)."""
    parts = [escape_measurement(measurement)]
    parts.extend(
        f"{escape_key(key, 'tag key')}={escape_key(value)}" for key, value in sorted(tags.items()) if value
    )
    return ",".join(parts)

