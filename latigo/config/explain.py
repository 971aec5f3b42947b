"""pydantic's validation errors, explained in the schema's words.

pydantic reports ``queue.kafka.lease`` for the key an operator writes as ``queue.lease``,
"Input should be a valid dictionary" where a section was expected, and "Extra inputs are not
permitted" for a key that belongs to another backend. Each error becomes one line that names
the key as written, says what is expected, and names the variable that set it, if one did.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from latigo.config.backends import BACKENDS, tag
from latigo.config.environment import env_path, latigo_variables
from latigo.config.errors import quote
from latigo.config.schema import Config, models_in
from latigo.config.values import DURATION_FORMS


def _key_path(loc: tuple[Any, ...]) -> tuple[tuple[str, ...], str | None]:
    """An error's location as key names, without the backend tag pydantic inserts after a
    backend section (``queue.kafka.lease`` is the key ``queue.lease``); and that tag."""
    parts = [str(part) for part in loc]
    found = None
    if len(parts) > 1 and parts[0] in BACKENDS and parts[1] in {tag(model) for model in BACKENDS[parts[0]]}:
        found = parts.pop(1)
    return tuple(parts), found


def _format_path(path: tuple[str, ...]) -> str:
    return ".".join(path)


def _model_at(path: tuple[str, ...], backend: str | None) -> type[BaseModel] | None:
    """The section (or nested model) a path of keys leads to."""
    model: type[BaseModel] | None = Config
    for index, part in enumerate(path):
        if model is None or part not in model.model_fields:
            return None
        if index == 0 and part in BACKENDS:
            model = next((m for m in BACKENDS[part] if tag(m) == (backend or "sql")), None)
        else:
            models = models_in(model.model_fields[part].annotation)
            model = models[0] if models else None
    return model


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, (list, tuple)):
        return "a list"
    return "a value"


def _explain(item: Any) -> tuple[tuple[str, ...], str]:
    """One pydantic error as (key path, message naming the key and saying what is expected)."""
    path, backend = _key_path(item["loc"])
    key = _format_path(path)
    kind = item["type"]
    message = item["msg"]
    if kind == "union_tag_invalid":
        section = path[0] if path else ""
        expected = ", ".join(tag(model) for model in BACKENDS.get(section, ()))
        found = item.get("ctx", {}).get("tag", "")
        shown = f"{quote(found)} is not one of {expected}" if found else f"must be one of {expected}"
        return (*path, "type"), f"{key}.type: {shown}"
    if kind == "extra_forbidden" and path:
        name, parent = path[-1], path[:-1]
        if len(parent) == 1 and parent[0] in BACKENDS:
            owners = [
                tag(model)
                for model in BACKENDS[parent[0]]
                if name in model.model_fields and tag(model) != (backend or "sql")
            ]
            if owners:
                return path, (
                    f"{key}: a key of {parent[0]}.type {' or '.join(owners)}, not of {backend or 'sql'}: "
                    f"remove it (or comment it out) when {parent[0]}.type is {backend or 'sql'}"
                )
        model = _model_at(parent, backend)
        known = f"; {_format_path(parent)} takes {', '.join(model.model_fields)}" if model and parent else ""
        return path, f"{key}: unknown key{known}"
    if kind == "missing":
        return path, f"{key}: required"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"{key}: must be a mapping of keys (a section), not {_kind(item.get('input'))}"
    if kind.startswith("byte_size"):
        return path, f"{key}: not a size: write bytes, or 64KiB, 2MB"
    if kind == "value_error":
        message = message.removeprefix("Value error, ")
    if kind in ("timedelta_type", "timedelta_parsing"):
        message = f"not a duration: write {DURATION_FORMS}"
    if not path or message.startswith(f"{key}.") or message.startswith(f"{key} "):
        return path, message  # a check across keys, whose message names them
    return path, f"{key}: {message}"


def describe(error: ValidationError, source: str, environ: dict[str, str]) -> str:
    """The whole validation error as a message: one line per key, each naming its variable
    when one set it."""
    variables = {env_path(name): name for name in latigo_variables(environ)}
    lines = [f"invalid configuration ({source}):"]
    for item in error.errors(include_url=False):
        path, message = _explain(item)
        lowered = tuple(part.lower() for part in path)
        setters = [name for where, name in variables.items() if where == lowered[: len(where)]]
        if setters:
            message += f" (set by {', '.join(sorted(setters))})"
        lines.append(f"  {message}")
    return "\n".join(lines)
