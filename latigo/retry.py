"""Retry policy, free of I/O: capped exponential backoff with full jitter.

Full jitter (a uniform draw between zero and the capped exponential) spreads the retries of
many executors that failed together, so a Gordo that comes back is not hit by all of them
in the same second.
"""

from __future__ import annotations

import random
from datetime import timedelta


def backoff(attempt: int, base: timedelta, cap: timedelta, draw=random.random) -> timedelta:
    """The wait before retry number ``attempt`` (1 for the first retry)."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    # in float seconds: a timedelta overflows long before the exponent is large
    ceiling = min(cap.total_seconds(), base.total_seconds() * 2.0 ** min(attempt - 1, 1000))
    return timedelta(seconds=ceiling * draw())
