"""Secrets kept out of every message and out of ``latigo config show``.

A secret is the value of a schema ``SecretStr`` key, of any key named like a secret
(queue.options' ``sasl.password``), the password of a URL, or a connection string's key. One
load gathers them from the file's text (which may not parse), the parsed document and the
environment into :class:`Secrets`, and every message leaves through its ``redact``: a
pydantic message, a YAML snippet or a quoted value never prints one.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, SecretStr

from latigo.config.backends import BACKENDS
from latigo.config.schema import ENV_NESTING, ENV_PREFIX, Config, models_in
from latigo.config.strict_yaml import MAX_YAML_DEPTH

# what masked secrets are printed as
MASK = "***"
# words that make a key secret wherever it is (queue.options' sasl.password, say), besides
# the schema's SecretStr keys
SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "connection_string", "sharedaccesskey")


def _secret_fields() -> frozenset[str]:
    names: set[str] = set()
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [Config, *(model for models in BACKENDS.values() for model in models)]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, field in model.model_fields.items():
            if field.annotation is SecretStr:
                names.add(name)
            todo.extend(models_in(field.annotation))
    return frozenset(names)


# the schema's secret keys (SecretStr): masked in every message and in `latigo config show`
SECRET_KEYS = _secret_fields()
# a key whose value is secret: a schema secret, or a name with a secret word in it
_SECRET_KEY = re.compile("|".join(re.escape(word) for word in sorted(SECRET_KEYS | set(SECRET_WORDS))), re.I)
# a URL's password: scheme://user:PASSWORD@ (greedy up to the last @ before white space)
# ("<password>@" is the placeholder of the messages' own examples)
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:)(?!<password>@)(?P<password>\S*)@")
# a URL's password as a line of the file holds it, where a stray blank may split it: from the
# user's colon up to the line's last @, or to the line's end when its @ is on the next line
_URL_PASSWORD_IN_LINE = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s/@:]*:(?!<password>@)(?P<password>.*)")
# a secret key and its value on one line of YAML, block or flow style
_SECRET_IN_LINE = re.compile(
    r"""(?P<key>["']?[\w.$-]*(?:""" + _SECRET_KEY.pattern + r""")[\w.$-]*["']?\s*:(?=\s|$)\s*)"""
    r"""(?P<value>"(?:[^"\\]|\\.)*"?|'(?:[^']|'')*'?|[^,}\]#]*)""",
    re.I,
)
# a line that starts an entry of its own (a key, a list item, a comment, a document marker),
# not the broken-off rest of the value above it
_YAML_ENTRY = re.compile(r"\s*(?:-(?:\s|$)|#|---|\.\.\.|[^\s#][^#]*?:(?:\s|$))")
# the parts of a connection string (Event Hubs, Azure Storage) that are secrets
_CONNECTION_STRING_SECRET = re.compile(r"SharedAccessKey|SharedAccessSignature|AccountKey|Password|Pwd", re.I)


def _is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.search(key))


def masked_line(line: str) -> str:
    """A line of the file that holds a secret, as a message may quote it: up to the secret
    key and its colon (or its indentation, for a continuation line), then the mask."""
    match = _SECRET_IN_LINE.search(line)
    kept = match.end("key") if match else len(line) - len(line.lstrip())
    return line[:kept] + MASK


class Secrets:
    """The secret values of one load (values of secret keys, passwords in URLs), gathered
    from the file's text, the parsed document and the environment, so that no message
    quotes one of them: not a pydantic message, not a YAML snippet, not a quoted value."""

    def __init__(self) -> None:
        self.values: set[str] = set()

    def add(self, value: Any) -> None:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            for text in (str(value).strip(), str(value).strip().strip("'\"")):
                if text:
                    self.values.add(text)
            # a connection string's key (SharedAccessKey=...) is a secret on its own too
            for part in str(value).split(";"):
                name, equals, secret = part.partition("=")
                if equals and secret.strip() and _CONNECTION_STRING_SECRET.fullmatch(name.strip()):
                    self.values.add(secret.strip())

    def add_urls(self, text: str) -> None:
        for match in _URL_PASSWORD.finditer(text):
            self.add(match["password"])
        try:
            password = urlsplit(text.strip()).password
        except ValueError:
            password = None
        self.add(password)

    def add_value(self, value: Any, secret: bool = False, depth: int = 0) -> None:
        """Everything under a secret key; URL passwords everywhere."""
        if depth > MAX_YAML_DEPTH * 2:
            return
        if isinstance(value, dict):
            for key, item in value.items():
                self.add_value(item, secret or _is_secret_key(key), depth + 1)
        elif isinstance(value, (list, tuple)):
            for item in value:
                self.add_value(item, secret, depth + 1)
        else:
            if secret:
                self.add(value)
            if isinstance(value, str):
                self.add_urls(value)

    def add_environment(self, environ: dict[str, str]) -> None:
        for name, value in environ.items():
            if not name.upper().startswith(ENV_PREFIX):
                continue
            secret = _is_secret_key(name[len(ENV_PREFIX) :].split(ENV_NESTING)[-1])
            if secret:
                self.add(value)
            self.add_urls(value)
            try:
                self.add_value(json.loads(value), secret)
            except (ValueError, RecursionError):
                pass

    def add_text(self, lines: list[str]) -> set[int]:
        """Secret values written in the file's text, found line by line (the file may not
        parse); returns the lines that hold one, continuation lines included."""
        marked: set[int] = set()
        for number, line in enumerate(lines):
            self.add_urls(line)
            marked |= self._url_password(lines, number)
        for number, line in enumerate(lines):
            match = _SECRET_IN_LINE.search(line)
            if not match:
                continue
            marked.add(number)
            value = match["value"].strip()
            self.add(value)
            self.add(value.rstrip(",}] "))
            quote = value[:1] if value[:1] in "'\"" else ""
            still_quoted = bool(quote) and (len(value) < 2 or not value.endswith(quote))
            indent = len(line) - len(line.lstrip())
            for following in range(number + 1, len(lines)):
                text = lines[following]
                if still_quoted:
                    marked.add(following)
                    self.add(text)
                    if quote in text:
                        break
                    continue
                if text.strip() and len(text) - len(text.lstrip()) <= indent:
                    if not _YAML_ENTRY.match(text):  # the value's rest, broken off by a line break
                        marked.add(following)
                        self.add(text)
                    break
                marked.add(following)
                self.add(text)
        return marked

    def _url_password(self, lines: list[str], number: int) -> set[int]:
        """A URL password on line ``number`` that a blank or a line break splits (a typo, or a
        tab pasted in): the lines that hold a part of it."""
        match = _URL_PASSWORD_IN_LINE.search(lines[number])
        if not match:
            return set()
        rest = match["password"]
        if "@" in rest:
            self.add(rest[: rest.rindex("@")])
            return {number}
        following = next((later for later in range(number + 1, len(lines)) if lines[later].strip()), None)
        if following is None or "@" not in lines[following] or _YAML_ENTRY.match(lines[following]):
            return set()  # host:port, most likely, and the next line a key of its own: no password
        text = lines[following].strip()
        self.add(rest)
        self.add(text[: text.rindex("@")])
        return {number, following}

    def redact(self, text: str) -> str:
        for secret in sorted(self.values, key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, MASK)
            else:  # a short one only where it stands alone, or every "a" of the message goes
                text = re.sub(rf"(?<![\w*]){re.escape(secret)}(?![\w*])", MASK, text)
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
        # a message must print on any terminal: text from a non-UTF-8 environment is escaped
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _mask_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    if not password:
        return text
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:{MASK}@{host}"))


def _secrets_of(value: Any, secrets: Secrets) -> None:
    """The secret values a loaded configuration holds: its SecretStr values, values of keys
    named like secrets, passwords of URLs."""
    if isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _secrets_of(getattr(value, name), secrets)
    elif isinstance(value, SecretStr):
        secrets.add(value.get_secret_value())
    else:
        secrets.add_value(value)


def _masked(value: Any, secrets: Secrets, secret: bool = False) -> Any:
    if isinstance(value, dict):
        return {
            (secrets.redact(key) if isinstance(key, str) else key): _masked(
                item, secrets, secret or _is_secret_key(key)
            )
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_masked(item, secrets, secret) for item in value]
    if secret and value not in ("", None):
        return str(SecretStr(str(value)))
    # a secret's value found where no secret goes (a password pasted as a user name) is masked too
    return secrets.redact(_mask_url(value)) if isinstance(value, str) else value


def dump_config(config: Config) -> str:
    """The effective configuration as YAML, with secrets masked: the schema's secret keys,
    any other key named like a secret (queue.options' sasl.password), the password of every
    URL (database.url's included), and any of those values wherever else it appears."""
    secrets = Secrets()
    _secrets_of(config, secrets)
    return yaml.safe_dump(_masked(config.model_dump(mode="json"), secrets), sort_keys=False)
