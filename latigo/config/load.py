"""Loading the configuration: the file, then the variables, then the schema, in one call
that lets nothing but a :class:`ConfigError` with every secret masked escape.

This is meant to be the last place a configuration can fail: whatever passes must not fail
or misbehave at start, and whatever fails (a bad file, a bad variable, even a bug in these
checks) ends as a message, never as a traceback that might quote a secret.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings.exceptions import SettingsError

from latigo.config.environment import CONFIG_PATH_VARIABLE, check_json_variables, unknown_env_keys
from latigo.config.errors import ConfigError
from latigo.config.explain import describe
from latigo.config.file import read_yaml
from latigo.config.masking import Secrets
from latigo.config.schema import ENV_NESTING, ENV_PREFIX, Config

# file read when LATIGO_CONFIG is not set
DEFAULT_CONFIG_PATH = "local_config.yaml"


def config_path(path: str | os.PathLike[str] | None = None) -> Path:
    """The file to read: ``path``, else LATIGO_CONFIG, else local_config.yaml."""
    return Path(path or os.environ.get(CONFIG_PATH_VARIABLE) or DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike[str] | None = None, *, require_file: bool = False) -> Config:
    """Read the YAML file (if present) and the environment; raise ConfigError naming bad keys.
    Nothing else escapes: whatever the file or the variables hold, the caller gets a
    ConfigError whose message has every secret masked."""
    file = config_path(path)
    environ = dict(os.environ)
    secrets = Secrets()
    try:
        secrets.add_environment(environ)
        return _load(file, environ, secrets, require_file or path is not None)
    except ConfigError as error:
        raise ConfigError(secrets.redact(str(error))) from None
    except RecursionError:
        raise ConfigError(f"{file} and {ENV_PREFIX}* variables: nested too deeply") from None
    except Exception as error:  # a bug in these checks: still a message, never a traceback quoting a secret
        raise ConfigError(
            f"{file} and {ENV_PREFIX}* variables: the configuration could not be checked "
            f"({type(error).__name__}): a bug in Latigo's configuration checks, please report it"
        ) from None


def _load(file: Path, environ: dict[str, str], secrets: Secrets, must_exist: bool) -> Config:
    try:
        exists = file.exists()
    except (OSError, ValueError):
        exists = False
    document: dict[str, Any] = {}
    if exists:
        document = read_yaml(file, secrets)
    elif must_exist:
        raise ConfigError(f"{file}: no such configuration file")
    unknown = unknown_env_keys(environ)
    if unknown:
        raise ConfigError(
            "unknown configuration variables: "
            + ", ".join(sorted(unknown))
            + f" (sections: {', '.join(Config.model_fields)})"
        )
    check_json_variables(environ)
    source = f"{file} and {ENV_PREFIX}* variables"
    try:
        return Config(**document)
    except ValidationError as error:
        raise ConfigError(describe(error, source, environ)) from None
    except SettingsError as error:
        found = re.search(r'field "(\w+)"', str(error))
        section = f"{ENV_PREFIX}{found[1].upper()}{ENV_NESTING}*" if found else f"{ENV_PREFIX}*"
        raise ConfigError(
            f"invalid configuration variables: {section}: cannot be read (lists and sections are JSON)"
        ) from None
