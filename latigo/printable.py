"""Text from outside (Gordo's error bodies, model and tag names) made safe for a terminal
and a log line: a control character would otherwise move the cursor, retitle the terminal
or start a forged line."""

from __future__ import annotations

import re

# C0 and C1 control characters and DEL: what a terminal acts on instead of showing
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with each control character written as its escape (``\\n``, ``\\x1b``)."""
    return _CONTROL.sub(lambda match: match.group().encode("unicode_escape").decode("ascii"), text)
