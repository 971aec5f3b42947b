"""The value types of the schema: durations, timeouts, counts and names, each with its bounds.

Durations are written the way an operator thinks of them ("30m", "7d") and read back in that
form, exactly. Each type is bounded where a value stops making sense for a prediction service
(an hour-long HTTP timeout, a billion threads), and a duration past ten years is refused here,
before any date arithmetic can overflow on it.
"""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, TypeAdapter, ValidationError

# units accepted in compact durations such as "30m" or "7d"
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# what a duration looks like, for error messages
DURATION_FORMS = "30s, 30m, 6h, 7d, 1w, seconds, or ISO 8601 (PT30M)"
# the longest duration any key takes: ten years. Nothing in Latigo is usefully longer, and
# longer ones break date arithmetic (now + leader_ttl overflows a datetime at 2e12 seconds)
MAX_DURATION = timedelta(days=3653)
# the longest HTTP connect or read timeout, seconds: an hour of silence is an outage
MAX_TIMEOUT_S = 3600.0
# most threads, processes or calls in flight one setting may ask for
MAX_PARALLEL = 1024
# largest count (attempts, backlog, batch, partitions...): fits any SQL integer column
MAX_COUNT = 1_000_000_000

# pydantic's own reading of ISO 8601 ("PT30M") and "HH:MM:SS" durations
_ISO_DURATION = TypeAdapter(timedelta)
# the message for a duration longer than MAX_DURATION
_TOO_LONG = f"longer than {MAX_DURATION.days}d (10 years), the longest duration accepted"


def _seconds(amount: float, unit: int) -> timedelta:
    if not math.isfinite(amount):
        raise ValueError(f"not a finite duration: write {DURATION_FORMS}")
    seconds = amount * unit
    if abs(seconds) > MAX_DURATION.total_seconds():
        raise ValueError(_TOO_LONG)
    return timedelta(seconds=seconds)


def duration(value: Any) -> timedelta:
    """Read a duration: "90s", "30m", "2h", "7d", "1w", a number of seconds (also as text,
    as environment variables give it), or ISO 8601 ("PT30M", "00:30:00"). A ValueError says
    what a duration looks like; one that overflows or is longer than MAX_DURATION is refused
    here, before any arithmetic can overflow."""
    if isinstance(value, timedelta):
        result = value
    elif isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a duration: write {DURATION_FORMS}")
    elif isinstance(value, (int, float)):
        result = _seconds(value, 1)
    else:
        text = value.strip()
        number, unit = text, 1
        if text[-1:].lower() in DURATION_UNITS:
            number, unit = text[:-1].strip(), DURATION_UNITS[text[-1].lower()]
        try:
            amount = float(number) if number else None
        except ValueError:
            amount = None
        if amount is not None:
            result = _seconds(amount, unit)
        else:
            try:
                result = _ISO_DURATION.validate_python(text)
            except ValidationError:
                raise ValueError(f"not a duration: write {DURATION_FORMS}") from None
    if abs(result) > MAX_DURATION:
        raise ValueError(_TOO_LONG)
    return result


def parse_duration(value: Any) -> Any:
    """A duration as :func:`duration` reads it, or ``value`` unchanged when it is none (for
    callers that report the failure themselves, such as command-line options)."""
    try:
        return duration(value)
    except ValueError:
        return value


def format_duration(value: timedelta) -> str:
    """The compact form ("30m", "1w", "1.5s"), exact: it reads back to the same duration."""
    micro = value // timedelta(microseconds=1)
    if micro % 1_000_000:
        return f"{Decimal(micro) / 1_000_000}s"
    seconds = micro // 1_000_000
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return "0s"


# a duration in config: "30m", "7d", seconds, or ISO 8601; written back in the compact form
Duration = Annotated[timedelta, BeforeValidator(duration), PlainSerializer(format_duration, when_used="json")]


def at_least(shortest: timedelta, *, zero: bool = True) -> AfterValidator:
    """An AfterValidator: the duration is at least ``shortest`` (and not zero, unless
    ``zero``), in words an operator reads (pydantic's own bound reads "greater than
    datetime.timedelta(0)")."""
    if not zero:
        problem = "must be longer than 0s"
    elif shortest:
        problem = f"must be at least {format_duration(shortest)}"
    else:
        problem = "must not be negative"

    def check(value: timedelta) -> timedelta:
        if value < shortest or (not zero and not value):
            raise ValueError(problem)
        return value

    return AfterValidator(check)


# a duration that must be longer than zero (a tick, a TTL, a poll interval)
PositiveDuration = Annotated[Duration, at_least(timedelta(0), zero=False)]
# a duration that may be zero but not negative (a delay, a grace, a backoff)
NonNegativeDuration = Annotated[Duration, at_least(timedelta(0))]
# an HTTP timeout in seconds: finite, positive, at most MAX_TIMEOUT_S
Timeout = Annotated[float, Field(gt=0, le=MAX_TIMEOUT_S, allow_inf_nan=False)]
# how many threads, processes or calls in flight
Parallel = Annotated[int, Field(ge=1, le=MAX_PARALLEL)]
# a positive count
Count = Annotated[int, Field(ge=1, le=MAX_COUNT)]
# a name that cannot be empty (a database, a topic, a measurement)
Name = Annotated[str, Field(min_length=1)]
