"""The time source, injectable so scheduling can be tested without waiting."""

from collections.abc import Callable
from datetime import UTC, datetime

# a function returning the current time as an aware UTC datetime
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)
