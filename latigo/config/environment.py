"""The ``LATIGO_*`` environment variables, checked before pydantic-settings reads them.

pydantic-settings ignores a variable it has no field for and fails on a list or section
that is not JSON with a message naming neither the variable nor what to write. These checks
come first, so a typo in a variable's name stops start-up like a typo in the file does, and
a bad JSON value is refused with its variable's name and an example.
"""

from __future__ import annotations

import json
from typing import Any, get_origin

from latigo.config.errors import ConfigError
from latigo.config.schema import ENV_NESTING, ENV_PREFIX, Config, models_in

# environment variable naming the YAML file to read
CONFIG_PATH_VARIABLE = "LATIGO_CONFIG"


def env_path(name: str) -> tuple[str, ...]:
    """The keys a variable sets, lower case: LATIGO_QUEUE__LEASE is ("queue", "lease")."""
    return tuple(name[len(ENV_PREFIX) :].lower().split(ENV_NESTING))


def latigo_variables(environ: dict[str, str]) -> dict[str, str]:
    """The variables pydantic-settings reads (their names are case-insensitive)."""
    return {
        name: value
        for name, value in environ.items()
        if name.upper().startswith(ENV_PREFIX) and name.upper() != CONFIG_PATH_VARIABLE
    }


def unknown_env_keys(environ: dict[str, str]) -> list[str]:
    """The variables whose first key is not a section."""
    return [name for name in latigo_variables(environ) if env_path(name)[0] not in Config.model_fields]


def _expects_json(path: tuple[str, ...]) -> bool:
    """Whether the key a variable sets is a list, a mapping or a section: pydantic-settings
    reads those as JSON."""
    annotations: list[Any] = [Config.model_fields[path[0]].annotation]
    for part in path[1:]:
        found = [
            field.annotation
            for annotation in annotations
            for model in models_in(annotation)
            for name, field in model.model_fields.items()
            if name.lower() == part
        ]
        if not found:
            return False
        annotations = found
    return any(
        models_in(annotation) or get_origin(annotation) in (list, dict) or annotation in (list, dict)
        for annotation in annotations
    )


def check_json_variables(environ: dict[str, str]) -> None:
    """Refuse every variable that sets a list, a mapping or a section with text that is not JSON."""
    problems = []
    for name, value in sorted(latigo_variables(environ).items()):
        if not value or not _expects_json(env_path(name)):
            continue
        try:
            json.loads(value)
        except ValueError:
            problems.append(
                f"  {name}: not JSON: a list or a section in a variable is JSON, e.g. "
                f"""{ENV_PREFIX}MODELS__PROJECTS='["p1", "p2"]' or {ENV_PREFIX}QUEUE='{{"type": "kafka"}}'"""
            )
        except RecursionError:
            problems.append(f"  {name}: nested too deeply")
    if problems:
        raise ConfigError("invalid configuration variables:\n" + "\n".join(problems))
