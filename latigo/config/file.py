"""Reading the configuration file: bounded in size, UTF-8, parsed by the strict loader, and
a mapping of known sections at the top.

A file that cannot be used ends as one :class:`ConfigError` that says where (line and
column), what, and quotes the line with a caret under the problem, with secrets masked: the
file's secrets are gathered from its text before it is parsed, since a broken file is the
one most likely to be quoted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from latigo.config.errors import ConfigError, quote
from latigo.config.masking import Secrets, masked_line
from latigo.config.schema import Config
from latigo.config.strict_yaml import StrictLoader

# largest configuration file read, bytes: a real one is a few KiB
MAX_FILE_BYTES = 1 << 20


def _yaml_problem(file: Path, error: yaml.YAMLError, lines: list[str], secrets: Secrets, secret_lines: set[int]) -> str:
    """A YAML error as one message: where, what, and the line quoted with its secrets masked."""
    if isinstance(error, yaml.reader.ReaderError):
        if error.encoding == "unicode":
            return (
                f"{file}: not valid YAML: character #x{error.character:04x} at position {error.position} "
                f"cannot appear in YAML ({error.reason})"
            )
        return f"{file}: not UTF-8 text (byte {error.position}: {error.reason}): a configuration file is UTF-8"
    if not isinstance(error, yaml.MarkedYAMLError):
        return f"{file}: not valid YAML"
    mark = error.problem_mark or error.context_mark
    what = error.problem or "not valid YAML"
    if error.context:
        elsewhere = error.context_mark
        where = f" on line {elsewhere.line + 1}" if elsewhere is not None and elsewhere is not mark else ""
        what += f" ({error.context}{where})"
    if mark is None:
        return f"{file}: not valid YAML: {what}"
    message = f"{file}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {what}"
    if 0 <= mark.line < len(lines):
        line = lines[mark.line]
        shown = secrets.redact(masked_line(line) if mark.line in secret_lines else line).replace("\t", " ")
        shown = "".join(c if c.isprintable() else "?" for c in shown)
        line = line.replace("\t", " ")
        column = mark.column
        if len(shown) > 120:
            start = max(0, min(column - 60, len(shown) - 120))
            shown, column = shown[start : start + 120], column - start
        message += f"\n    {shown}"
        if shown == line and 0 <= column <= len(shown):
            message += f"\n    {' ' * column}^"
    return message


def read_yaml(file: Path, secrets: Secrets) -> dict[str, Any]:
    """The file's sections as a mapping, each an empty mapping when the file leaves it empty;
    its secrets go into ``secrets`` on the way."""
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{file}: cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(f"{file}: longer than {MAX_FILE_BYTES} bytes: not a configuration file")
    lines = data.decode("utf-8", "replace").splitlines()
    secret_lines = secrets.add_text(lines)
    try:
        document = yaml.load(data, Loader=StrictLoader)
    except yaml.YAMLError as error:
        raise ConfigError(_yaml_problem(file, error, lines, secrets, secret_lines)) from None
    except RecursionError:
        raise ConfigError(f"{file}: not valid YAML: nested too deeply") from None
    if document is None:
        return {}
    secrets.add_value(document)
    if not isinstance(document, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections ({', '.join(Config.model_fields)})")
    unknown = [key for key in document if not isinstance(key, str) or key not in Config.model_fields]
    if unknown:
        raise ConfigError(
            f"{file}: "
            + ", ".join(quote(key) for key in unknown)
            + f": not a section; the sections are {', '.join(Config.model_fields)}"
        )
    # an empty section (every key commented out) is YAML's null: the section's defaults
    return {key: {} if value is None else value for key, value in document.items()}
