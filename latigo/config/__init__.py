"""One validated configuration schema, shared by every Latigo process.

The scheduler, the executors and the operator commands all read the same YAML file
(``LATIGO_CONFIG``, default ``local_config.yaml``), overridden key by key by ``LATIGO_*``
environment variables (``LATIGO_DATABASE__URL``, ``LATIGO_SCHEDULE__INTERVAL``, ...).
Every key has a default; an unknown key, a bad value or an unknown provider ``type`` stops
start-up with a message naming the key, because a typo that silently falls back to a
default is how a production service quietly stops predicting.

The check is meant to be the last place a configuration can fail: whatever passes it must
not fail or misbehave at start (a database URL nobody can connect with, a duration that
overflows date arithmetic, an idle loop that spins because its poll interval is 0). Whatever
fails it ends as a :class:`ConfigError` whose message names the key and says what is
expected, and never quotes a secret: values of secret keys and passwords in URLs are masked
in every message, YAML snippets included.

The package, one concept a module, each importing only those before it:

- ``errors``: :class:`ConfigError` and how a value is quoted in a message;
- ``values``: durations (read and written back exactly), timeouts, counts, names;
- ``urls``: HTTP server URLs and the database URL, checked without connecting;
- ``sections``: ``Section`` and the database, schedule, executor, run, metrics and logging sections;
- ``providers``: Gordo (and Azure AD), the sensor and prediction stores;
- ``queue``: the task queue's backends;
- ``backends``: the sections chosen by ``type:`` and ``BACKENDS``;
- ``schema``: :class:`Config`, its cross-section checks and the sources' precedence;
- ``masking``: secrets kept out of every message, and ``latigo config show``;
- ``strict_yaml``: the YAML loader that refuses duplicate keys, deep nesting and alias bombs;
- ``file``: reading the file; ``environment``: the ``LATIGO_*`` variables;
- ``explain``: pydantic's errors in the schema's words;
- ``load``: :func:`load_config`, through which nothing but a masked ConfigError escapes.

Everything callers use is importable from ``latigo.config`` itself.
"""

from latigo.config.backends import BACKENDS, PredictionsConfig, QueueConfig, SensorsConfig
from latigo.config.environment import CONFIG_PATH_VARIABLE
from latigo.config.errors import ConfigError
from latigo.config.load import DEFAULT_CONFIG_PATH, config_path, load_config
from latigo.config.masking import SECRET_KEYS, dump_config
from latigo.config.providers import (
    AzureAdConfig,
    GordoConfig,
    HttpConfig,
    InfluxConfig,
    InfluxPredictionsConfig,
    InfluxSensorsConfig,
    SqlPredictionsConfig,
    SqlSensorsConfig,
)
from latigo.config.queue import KAFKA_MAX_POLL_MS, EventHubQueueConfig, KafkaQueueConfig, SqlQueueConfig
from latigo.config.schema import ENV_NESTING, ENV_PREFIX, Config, default_document
from latigo.config.sections import (
    DatabaseConfig,
    ExecutorConfig,
    LoggingConfig,
    MetricsConfig,
    RetentionConfig,
    RunConfig,
    ScheduleConfig,
    Section,
)
from latigo.config.values import (
    Count,
    Duration,
    Name,
    NonNegativeDuration,
    Parallel,
    PositiveDuration,
    Timeout,
    duration,
    parse_duration,
)

# the names callers import from latigo.config, whichever module of the package defines them
__all__ = [
    "BACKENDS",
    "CONFIG_PATH_VARIABLE",
    "DEFAULT_CONFIG_PATH",
    "ENV_NESTING",
    "ENV_PREFIX",
    "KAFKA_MAX_POLL_MS",
    "SECRET_KEYS",
    "AzureAdConfig",
    "Config",
    "ConfigError",
    "Count",
    "DatabaseConfig",
    "Duration",
    "EventHubQueueConfig",
    "ExecutorConfig",
    "GordoConfig",
    "HttpConfig",
    "InfluxConfig",
    "InfluxPredictionsConfig",
    "InfluxSensorsConfig",
    "KafkaQueueConfig",
    "LoggingConfig",
    "MetricsConfig",
    "Name",
    "NonNegativeDuration",
    "Parallel",
    "PositiveDuration",
    "PredictionsConfig",
    "QueueConfig",
    "RetentionConfig",
    "RunConfig",
    "ScheduleConfig",
    "Section",
    "SensorsConfig",
    "SqlPredictionsConfig",
    "SqlQueueConfig",
    "SqlSensorsConfig",
    "Timeout",
    "config_path",
    "default_document",
    "dump_config",
    "duration",
    "load_config",
    "parse_duration",
]
