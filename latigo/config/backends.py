"""The sections that are one of several backends (sensors, predictions, queue), chosen by
their ``type:`` key; a section without one is the embedded ``sql`` backend.

Each such section is a union discriminated by ``type``, so pydantic validates only the
chosen backend's keys and an error names ``queue.lease``, not every member of the union.
The unions are written out as types (mypy checks the code that narrows them), and
``BACKENDS`` is read off them, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Any, get_args

from pydantic import BaseModel, Discriminator, Tag

from latigo.config.providers import (
    InfluxPredictionsConfig,
    InfluxSensorsConfig,
    SqlPredictionsConfig,
    SqlSensorsConfig,
)
from latigo.config.queue import EventHubQueueConfig, KafkaQueueConfig, SqlQueueConfig
from latigo.config.sections import Section


def backend_type(value: Any) -> str:
    """The ``type`` of a backend section; a section without one is the embedded ``sql``. A
    type that is not text is no tag at all ("")."""
    kind = value.get("type", "sql") if isinstance(value, dict) else getattr(value, "type", "sql")
    return kind if isinstance(kind, str) else ""


def tag(section: type[BaseModel]) -> str:
    """The ``type:`` that chooses ``section``: the one value of its ``type`` field's Literal."""
    return get_args(section.model_fields["type"].annotation)[0]


# the sensor store, chosen by sensors.type; the first member is the default
SensorsConfig = Annotated[
    Annotated[SqlSensorsConfig, Tag(tag(SqlSensorsConfig))]
    | Annotated[InfluxSensorsConfig, Tag(tag(InfluxSensorsConfig))],
    Discriminator(backend_type),
]
# the prediction store, chosen by predictions.type; the first member is the default
PredictionsConfig = Annotated[
    Annotated[SqlPredictionsConfig, Tag(tag(SqlPredictionsConfig))]
    | Annotated[InfluxPredictionsConfig, Tag(tag(InfluxPredictionsConfig))],
    Discriminator(backend_type),
]
# the task queue, chosen by queue.type; the first member is the default
QueueConfig = Annotated[
    Annotated[SqlQueueConfig, Tag(tag(SqlQueueConfig))]
    | Annotated[KafkaQueueConfig, Tag(tag(KafkaQueueConfig))]
    | Annotated[EventHubQueueConfig, Tag(tag(EventHubQueueConfig))],
    Discriminator(backend_type),
]


def _members(backend: Any) -> tuple[type[Section], ...]:
    """The sections of a backend union, in the order written."""
    union = get_args(backend)[0]
    return tuple(get_args(member)[0] for member in get_args(union))


# the sections that are one of several backends, chosen by ``type:``; the first is the default
BACKENDS: dict[str, tuple[type[Section], ...]] = {
    "sensors": _members(SensorsConfig),
    "predictions": _members(PredictionsConfig),
    "queue": _members(QueueConfig),
}
