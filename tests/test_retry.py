"""The retry policy: capped exponential backoff with full jitter."""

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latigo.retry import backoff

BASE = timedelta(seconds=2)
CAP = timedelta(minutes=5)


def test_the_ceiling_doubles_then_caps():
    ceilings = [backoff(attempt, BASE, CAP, draw=lambda: 1.0) for attempt in range(1, 10)]
    assert ceilings[:4] == [timedelta(seconds=s) for s in (2, 4, 8, 16)]
    assert ceilings[-1] == CAP


@given(st.integers(min_value=1, max_value=10_000), st.floats(min_value=0, max_value=1, exclude_max=True))
def test_full_jitter_stays_between_zero_and_the_ceiling(attempt, draw):
    delay = backoff(attempt, BASE, CAP, draw=lambda: draw)
    assert timedelta(0) <= delay <= CAP


def test_attempts_count_from_one():
    with pytest.raises(ValueError):
        backoff(0, BASE, CAP)
