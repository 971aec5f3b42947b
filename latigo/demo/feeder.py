"""The demo's sensor feed: synthetic plant data with injected anomalies, written into the
configured sensor store, first as history and then live, minute by minute."""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta

from latigo.clock import Clock, system_clock
from latigo.demo.models import MODEL_TAGS
from latigo.demo.signals import ONE_MINUTE, signal
from latigo.providers.sensors import SensorDataProvider
from latigo.window import Grid

log = logging.getLogger(__name__)

# how often the live feed writes the minutes that have passed
FEED_EVERY = timedelta(seconds=20)
# longest stretch written in one go, so a long history does not sit in memory at once
FEED_CHUNK = timedelta(hours=6)


def all_tags() -> list[str]:
    return [tag for tags in MODEL_TAGS.values() for tag in tags]


def feed(sensors: SensorDataProvider, start: datetime, end: datetime) -> int:
    """Write every demo tag's values, anomalies included, for the minutes in ``[start, end)``."""
    written = 0
    cursor = start
    while cursor < end:
        stop = min(end, cursor + FEED_CHUNK)
        written += sensors.write(signal(all_tags(), cursor, stop, ONE_MINUTE, with_anomalies=True))
        cursor = stop
    return written


class LiveFeed(threading.Thread):
    """Keeps the sensor store current until stopped, as a plant historian would."""

    def __init__(self, sensors: SensorDataProvider, since: datetime, clock: Clock = system_clock) -> None:
        super().__init__(name="demo-feed", daemon=True)
        self._sensors = sensors
        self._fed_until = since
        self._clock = clock
        self.stopped = threading.Event()

    def run(self) -> None:
        minutes = Grid(ONE_MINUTE)
        while not self.stopped.wait(FEED_EVERY.total_seconds()):
            now = minutes.floor(self._clock())
            if now <= self._fed_until:
                continue
            try:
                feed(self._sensors, self._fed_until, now)
                self._fed_until = now
            except Exception:  # the demo feed retries at its next turn
                log.exception("demo feed failed; retrying")
