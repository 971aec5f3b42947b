"""The time source, injectable so scheduling can be tested without waiting."""

from datetime import datetime, timezone
from typing import Callable

# a function returning the current time as an aware UTC datetime
Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(timezone.utc)
