"""What a refused configuration looks like to the operator: one exception whose message names
every offending key, and values quoted back short and printable. Every module of the schema
raises through this one, so ``latigo config check`` has one thing to catch and exit 2 on."""

from __future__ import annotations

from typing import Any

# longest value quoted back in a message (a mistyped type:, say)
MAX_QUOTED = 40


class ConfigError(Exception):
    """The configuration cannot be used; the message names every offending key."""


def quote(value: Any) -> str:
    """A value quoted in a message, shortened and printable (then redacted with the rest)."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    if len(text) > MAX_QUOTED:
        text = text[: MAX_QUOTED - 3] + "..."
    return f"'{text}'"
