"""A process's parts are built from the configuration and closed together by ``with``."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from latigo.components import build
from latigo.config import Config

# longer than any test here may take: a queue still open would wait this long for work
RECEIVE_WAIT = timedelta(seconds=30)


def test_the_parts_are_closed_when_their_block_ends_by_an_error(tmp_path):
    with pytest.raises(RuntimeError, match="the command failed"):
        with build(Config(database={"url": f"sqlite:///{tmp_path}/latigo.db"})) as parts:
            assert parts.queue.depth() == 0  # open and migrated inside the block
            raise RuntimeError("the command failed")

    started = time.monotonic()
    assert parts.queue.receive(1, RECEIVE_WAIT) == []  # a closed queue waits for nothing
    assert time.monotonic() - started < RECEIVE_WAIT.total_seconds() / 3
