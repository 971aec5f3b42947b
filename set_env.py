#!/usr/bin/env python3
"""Turn local_config.yaml into environment variables: ``eval $(./set_env.py)``.

Creates local_config.yaml from Latigo's defaults when it is missing, then prints one
``export LATIGO_<SECTION>__<KEY>=<value>`` line per key, plus ``LATIGO_CONFIG``. Runs with
the project's virtualenv (.venv) when there is one, since it validates the file with
Latigo's own schema: a bad value stops here, naming the key, not at service start.

In the file it creates, a backend section (``sensors``, ``predictions``, ``queue``) holds
only its ``type`` and the keys every type of that section has (``queue.poll_interval``);
the keys of one type (``queue.lease`` of the sql queue, the kafka and eventhub keys) are
there as comments, with their defaults. So ``LATIGO_QUEUE__TYPE=kafka`` switches the queue
on the generated file, and on the variables this script exports from it: no key of the
sql queue is left behind to be refused by the kafka queue. The other way round, dropping
such keys when the environment switches the type, was not chosen: the loader never
ignores what a file says (an ignored key is how a service quietly runs on settings nobody
chose), so a key of another type is an error naming the type it belongs to.
"""

import os
import shlex
import sys
from pathlib import Path

# the project's virtualenv interpreter, which has Latigo and its dependencies
VENV_PYTHON = Path(__file__).resolve().parent / ".venv" / "bin" / "python"

if VENV_PYTHON.exists() and Path(sys.prefix).resolve() != VENV_PYTHON.parent.parent.resolve():
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])

import json  # noqa: E402

import yaml  # noqa: E402

from latigo.config import (  # noqa: E402
    BACKENDS,
    CONFIG_PATH_VARIABLE,
    ENV_NESTING,
    ENV_PREFIX,
    ConfigError,
    config_path,
    default_document,
    load_config,
)


def flatten(document: dict, prefix: str = ENV_PREFIX) -> dict[str, str]:
    """Nested sections as LATIGO_SECTION__KEY; lists and mappings as JSON, which is what
    the settings loader expects for them."""
    variables = {}
    for key, value in document.items():
        name = f"{prefix}{key.upper()}"
        if value is None:  # null: the default holds, and no variable can say null
            continue
        if isinstance(value, dict) and prefix == ENV_PREFIX:
            variables.update(flatten(value, name + ENV_NESTING))
        elif isinstance(value, (dict, list)):
            variables[name] = json.dumps(value)
        elif isinstance(value, bool):
            variables[name] = "true" if value else "false"
        else:
            variables[name] = str(value)
    return variables


# the first line of a created local_config.yaml
HEADER = "# Latigo configuration: every key is optional (defaults shown); see README.md.\n"


def _commented(document: dict, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in yaml.safe_dump(document, sort_keys=False).splitlines()]


def default_file() -> str:
    """local_config.yaml with Latigo's defaults; a backend section holds its type, the keys
    common to all its types, and each type's own keys commented out (see the docstring)."""
    defaults = default_document()
    lines = [HEADER.rstrip("\n")]
    for section, values in defaults.items():
        if section not in BACKENDS:
            lines.extend(yaml.safe_dump({section: values}, sort_keys=False).splitlines())
            continue
        types = {model.model_fields["type"].annotation.__args__[0]: model for model in BACKENDS[section]}
        documents = {
            name: model.model_construct(type=name).model_dump(mode="json") for name, model in types.items()
        }
        common = set.intersection(*(set(document) for document in documents.values())) - {"type"}
        lines.extend(yaml.safe_dump(
            {section: {"type": values["type"], **{key: values[key] for key in values if key in common}}},
            sort_keys=False,
        ).splitlines())
        for name, document in documents.items():
            own = {key: value for key, value in document.items() if key not in common and key != "type"}
            if own:
                lines.append(f"  # with {section}.type {name}:")
                lines.extend(_commented(own, "  "))
    return "\n".join(lines) + "\n"


def main() -> int:
    path = config_path(sys.argv[1] if len(sys.argv) > 1 else None)
    if not path.exists():
        path.write_text(default_file())
        print(f"# created {path} from the defaults", file=sys.stderr)
    try:
        config = load_config(path)
    except ConfigError as error:
        print(f"set_env.py: {error}", file=sys.stderr)
        return 2
    document = yaml.safe_load(path.read_text()) or {}
    print(f"export {CONFIG_PATH_VARIABLE}={shlex.quote(str(path.resolve()))}")
    for name, value in flatten(document).items():
        print(f"export {name}={shlex.quote(value)}")
    del config
    return 0


if __name__ == "__main__":
    sys.exit(main())
