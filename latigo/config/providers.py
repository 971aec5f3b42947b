"""The sections of the providers Latigo calls: Gordo for models (optionally behind Azure AD),
and the sensor and prediction stores, each either the Latigo database (``sql``, the embedded
default) or InfluxDB 1.x. Every HTTP server has both timeouts, so no call can block forever.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr

from latigo.config.sections import Section
from latigo.config.urls import HttpsUrlText, HttpUrlText
from latigo.config.values import MAX_COUNT, Count, Duration, Name, Parallel, PositiveDuration, Timeout, at_least


class HttpConfig(Section):
    """Timeouts for one HTTP server; every call has both, so no call can block forever."""

    connect_timeout: Timeout = 3.05
    read_timeout: Timeout = 60.0


class AzureAdConfig(Section):
    """Client credentials for a Gordo behind Azure AD."""

    authority: HttpsUrlText = Field(description="https://login.microsoftonline.com/<tenant id>")
    client_id: Name
    client_secret: SecretStr
    scope: Name = Field(description="the Gordo application's scope, e.g. api://<app id>/.default")
    # false for an authority msal cannot look up at Microsoft (Azure Stack, private clouds)
    instance_discovery: bool = True


class GordoConfig(HttpConfig):
    """Gordo as ModelInformationProvider and ModelExecutionProvider."""

    type: Literal["gordo"] = "gordo"
    base_url: HttpUrlText = "http://127.0.0.1:5555"
    projects: list[Name] = Field(default_factory=lambda: ["demo"], min_length=1)
    metadata_ttl: PositiveDuration = timedelta(minutes=10)
    max_concurrency: Parallel = 4
    data_margin: Annotated[int, Field(ge=0, le=MAX_COUNT)] = 2
    # Azure AD client credentials, when Gordo sits behind Azure AD
    auth: AzureAdConfig | None = None


class SqlSensorsConfig(Section):
    """Sensor data in the Latigo database's ``sensor_data`` table (the embedded default)."""

    type: Literal["sql"] = "sql"


class InfluxConfig(HttpConfig):
    """An InfluxDB 1.x server."""

    url: HttpUrlText = "http://127.0.0.1:8086"
    database: Name = "latigo"
    username: str = ""
    password: SecretStr = SecretStr("")


class InfluxSensorsConfig(InfluxConfig):
    """Sensor data in InfluxDB 1.x: one measurement, the tag name in a tag key, one value field."""

    type: Literal["influx"]
    measurement: Name = "sensors"
    tag_key: Name = "tag"
    field: Name = "value"


# the shortest prediction retention: a day, so a mistyped value cannot drop what was just stored
MIN_PREDICTION_RETENTION = timedelta(days=1)
# how long predictions are kept (none: for ever, as gordo-client does)
Retention = Annotated[Duration, at_least(MIN_PREDICTION_RETENTION)] | None


# the output groups Gordo answers, any of which predictions.outputs may choose
OUTPUT_GROUPS = (
    "model-input",
    "model-output",
    "tag-anomaly-scaled",
    "tag-anomaly-unscaled",
    "total-anomaly-scaled",
    "total-anomaly-unscaled",
    "anomaly-confidence",
    "total-anomaly-confidence",
    "smooth-tag-anomaly-scaled",
    "smooth-tag-anomaly-unscaled",
    "smooth-total-anomaly-scaled",
    "smooth-total-anomaly-unscaled",
)


def _known_outputs(outputs: list[str] | None) -> list[str] | None:
    if outputs is None:
        return None
    unknown = [output for output in outputs if output not in OUTPUT_GROUPS]
    if unknown:
        choices = ", ".join(OUTPUT_GROUPS)
        raise ValueError(f"unknown output group {', '.join(map(repr, unknown))}: choose from {choices}")
    if not outputs:
        raise ValueError("an empty list would store nothing: leave the key out to store every group")
    return list(dict.fromkeys(outputs))


# the output groups stored (none: every group Gordo answers, as gordo-client stores them)
Outputs = Annotated[list[str] | None, AfterValidator(_known_outputs)]


class SqlPredictionsConfig(Section):
    """Predictions in the Latigo database's ``predictions`` table."""

    type: Literal["sql"] = "sql"
    # older predictions are deleted by the leading scheduler: whole days on PostgreSQL
    # (its time partitions), a day of a model at a time on SQLite
    retention: Retention = None
    outputs: Outputs = None


class InfluxPredictionsConfig(InfluxConfig):
    """Predictions in InfluxDB 1.x, laid out like gordo-client's forwarder."""

    type: Literal["influx"]
    # the database's default retention policy ``latigo``, of this duration: InfluxDB drops
    # older points itself (and every default-policy writer of a shared database is under it)
    retention: Retention = None
    outputs: Outputs = None
    extra_tags: dict[str, str] = Field(default_factory=dict)
    batch_size: Count = 10000
    # a tag key for the project (none in gordo-client's layout): needed when two projects
    # share the database and a model name, or their points would be one series
    project_tag: str = ""
