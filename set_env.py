#!/usr/bin/env python3
"""Turn local_config.yaml into environment variables: ``eval $(./set_env.py)``.

Creates local_config.yaml from Latigo's defaults when it is missing, then prints one
``export LATIGO_<SECTION>__<KEY>=<value>`` line per key, plus ``LATIGO_CONFIG``. Runs with
the project's virtualenv (.venv) when there is one, since it validates the file with
Latigo's own schema: a bad value stops here, naming the key, not at service start.
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


def main() -> int:
    path = config_path(sys.argv[1] if len(sys.argv) > 1 else None)
    if not path.exists():
        path.write_text(
            "# Latigo configuration: every key is optional (defaults shown); see README.md.\n"
            + yaml.safe_dump(default_document(), sort_keys=False)
        )
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
