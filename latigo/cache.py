"""A small thread-safe cache whose entries expire, for model metadata and discovery.

Thousands of tasks share a few hundred models: asking Gordo for the same metadata per task
would double its load; never asking again would miss a rebuild.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable
from datetime import datetime, timedelta
from typing import Generic, TypeVar

from latigo.clock import Clock, system_clock

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: timedelta, clock: Clock = system_clock) -> None:
        self._ttl = ttl
        self._clock = clock
        self._entries: dict[K, tuple[datetime, V]] = {}
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            expires, value = entry
            if self._clock() >= expires:
                del self._entries[key]
                return None
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._entries[key] = (self._clock() + self._ttl, value)
