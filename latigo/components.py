"""Builds the parts a process needs from the configuration: the one place where a
``type:`` becomes a class. The config schema has already rejected unknown types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Self

from sqlalchemy import Engine

from latigo import db
from latigo.catalogue import Catalogue
from latigo.clock import Clock, system_clock
from latigo.config import (
    Config,
    EventHubQueueConfig,
    InfluxPredictionsConfig,
    InfluxSensorsConfig,
    KafkaQueueConfig,
)
from latigo.ledger import Ledger
from latigo.providers.models import ModelExecutionProvider, ModelInformationProvider
from latigo.providers.models.gordo import GordoModels
from latigo.providers.predictions import PredictionStorageProvider
from latigo.providers.sensors import SensorDataProvider
from latigo.queues import TaskQueue
from latigo.queues.sql import SqlQueue


@dataclass
class Components:
    """A process's parts, closed together: ``with build(config) as parts:``."""

    config: Config
    engine: Engine
    ledger: Ledger
    queue: TaskQueue
    model_info: ModelInformationProvider
    model_execution: ModelExecutionProvider
    sensors: SensorDataProvider
    predictions: PredictionStorageProvider
    clock: Clock

    def close(self) -> None:
        for part in (self.queue, self.model_execution, self.sensors, self.predictions):
            part.close()
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def build(config: Config, *, clock: Clock = system_clock, migrate: bool = True) -> Components:
    engine = db.create_engine(config.database.url, echo=config.database.echo)
    if migrate:
        db.upgrade(engine)
    gordo = GordoModels(config.models)
    call = config.models.connect_timeout + config.models.read_timeout
    # twice a Gordo call: a fetch may wait for one of the process's Gordo slots first
    catalogue = Catalogue(
        gordo, engine, claim=timedelta(seconds=2 * call), memory_ttl=config.models.metadata_ttl, clock=clock
    )
    sensors = build_sensors(config, engine)
    return Components(
        config=config,
        engine=engine,
        ledger=Ledger(engine, clock),
        queue=build_queue(config, engine, clock),
        model_info=catalogue,
        model_execution=gordo,
        sensors=sensors,
        predictions=build_predictions(config, engine),
        clock=clock,
    )


def build_queue(config: Config, engine: Engine, clock: Clock = system_clock) -> TaskQueue:
    settings = config.queue
    if isinstance(settings, KafkaQueueConfig):
        from latigo.queues.kafka import KafkaQueue

        return KafkaQueue(settings)
    if isinstance(settings, EventHubQueueConfig):
        from latigo.queues.eventhub import EventHubQueue

        return EventHubQueue(settings, engine)
    return SqlQueue(engine, lease=settings.lease, poll_interval=settings.poll_interval, clock=clock)


def build_sensors(config: Config, engine: Engine):
    if isinstance(config.sensors, InfluxSensorsConfig):
        from latigo.providers.sensors.influx import InfluxSensors

        return InfluxSensors(config.sensors)
    from latigo.providers.sensors.sql import SqlSensors

    return SqlSensors(engine)


def build_predictions(config: Config, engine: Engine) -> PredictionStorageProvider:
    if isinstance(config.predictions, InfluxPredictionsConfig):
        from latigo.providers.predictions.influx import InfluxPredictions

        return InfluxPredictions(config.predictions)
    from latigo.providers.predictions.sql import SqlPredictions

    return SqlPredictions(engine, config.predictions.outputs)
