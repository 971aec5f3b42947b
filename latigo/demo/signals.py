"""Deterministic synthetic sensor data for the demo, the local Gordo models and the tests.

The demo Gordo models are trained on this process and the demo feeder later sends it to
them, so both sides must see the very same numbers. Every value is therefore a pure
function of (tag name, timestamp): any sub-range of a call equals the same rows of a bigger
call, in any process, on any day. No random state, no ``hash()`` (salted per process).

The process looks like real plant data rather than uniform noise. Tags are named like
``PUMP1-PT-101``: the part before the first ``-`` is the machine, the letters after it the
instrument type (PT pressure, TT temperature, FT flow, ...), which sets a plausible level
and span. All tags of a machine follow two shared hidden factors, so they are correlated
and a model with two principal components reconstructs them:

* the machine's *load*: a daily cycle (machine-specific phase) plus a smooth wander;
* the site's *ambient* temperature: a daily cycle peaking in the afternoon plus a slow
  wander, shared by every machine.

Each tag adds its own deterministic noise. With ``with_anomalies=True`` a few faults are
laid on top (:func:`anomalies` lists them): a spike, a drift and a stuck sensor, one per
machine every :data:`ANOMALY_CYCLE`, on the tags whose loop number ends in 01, 02 or 03.

This module is imported both by Latigo (pandas 3, numpy 2) and inside the Gordo virtualenv
(pandas 1.5, numpy 1.26), so it uses only APIs valid in both, and imports nothing from
Latigo.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import numpy as np
import pandas as pd

# what a time argument may be: an aware or naive (= UTC) datetime, or an ISO 8601 string
TimeLike = datetime | str

# the Unix epoch, origin of the sample grid
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# default spacing of the samples: raw sensors report once a minute
ONE_MINUTE = timedelta(minutes=1)
# seconds in a day, period of the load and ambient cycles
DAY_S = 86_400

# (typical level, span) per instrument type code, in the instrument's usual unit
TYPE_RANGES: dict[str, tuple[float, float]] = {
    "PT": (30.0, 8.0),  # pressure, bar
    "PDT": (1.5, 0.4),  # differential pressure, bar
    "TT": (70.0, 15.0),  # temperature, degC
    "FT": (250.0, 60.0),  # flow, m3/h
    "ST": (3000.0, 400.0),  # speed, rpm
    "VT": (3.0, 1.0),  # vibration, mm/s
    "JT": (5.0, 1.5),  # power, MW
    "LT": (50.0, 12.0),  # level, %
    "ZT": (45.0, 15.0),  # valve position, %
    "IT": (300.0, 80.0),  # current, A
}
# (level, span) for tags whose type code is not in TYPE_RANGES
DEFAULT_RANGE = (100.0, 20.0)

# knot spacing of the smooth wander of a machine's load, seconds
LOAD_WANDER_KNOT_S = 1_800
# knot spacing of each tag's own wander, seconds
TAG_WANDER_KNOT_S = 10_800
# knot spacing of the slow wander of the ambient temperature, seconds
AMBIENT_WANDER_KNOT_S = 6 * 3_600

# one anomaly per machine in every cycle of this length
ANOMALY_CYCLE = timedelta(hours=6)
# anomaly kinds, taken in turn from one cycle to the next
ANOMALY_KINDS = ("spike", "drift", "stuck")
# how long each kind of anomaly lasts
ANOMALY_DURATIONS = {
    "spike": timedelta(minutes=30),
    "drift": timedelta(minutes=90),
    "stuck": timedelta(minutes=90),
}
# loop numbers (last two digits of a tag) that anomalies hit, in turn
ANOMALY_LOOPS = (1, 2, 3)
# spike height and final drift offset, in units of the tag's span
ANOMALY_SIZE = 0.8

# splitmix64 constants, for hashing (tag, time) into uniform numbers
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# 2**-53: turns the top 53 bits of a 64-bit hash into a float in [0, 1)
_TO_UNIT = 2.0**-53


class Anomaly(NamedTuple):
    """One injected fault: ``tag`` shows ``kind`` on ``[start, end)``."""

    tag: str
    kind: str
    start: datetime
    end: datetime


def signal(
    tags: Sequence[str],
    start: TimeLike,
    end: TimeLike,
    step: timedelta = ONE_MINUTE,
    with_anomalies: bool = False,
) -> pd.DataFrame:
    """Sensor values of ``tags`` at every multiple of ``step`` since the epoch in ``[start, end)``.

    Returns a frame with a UTC ``datetime64[ns]`` index named ``time`` and one float column
    per tag, in the order given. ``step`` must be a whole number of seconds.
    With ``with_anomalies`` the faults listed by :func:`anomalies` are laid on top.
    """
    seconds = _grid(start, end, step)
    t = seconds.astype(np.float64)
    ambient = _ambient(t, seconds)
    loads: dict[str, np.ndarray] = {}
    columns: dict[str, np.ndarray] = {}
    for tag in tags:
        machine = _machine(tag)
        if machine not in loads:
            loads[machine] = _load(machine, t, seconds)
        columns[tag] = _clean_tag(tag, loads[machine], ambient, seconds)
    if with_anomalies and len(seconds):
        for anomaly in anomalies(tags, _second(seconds[0]), _second(seconds[-1] + 1)):
            _apply(anomaly, columns[anomaly.tag], seconds, ambient)
    index = pd.DatetimeIndex((seconds * 1_000_000_000).astype("datetime64[ns]"), name="time").tz_localize("UTC")
    return pd.DataFrame({tag: columns[tag] for tag in tags}, index=index, columns=list(tags))


def anomalies(tags: Sequence[str], start: TimeLike, end: TimeLike) -> list[Anomaly]:
    """The faults that ``signal(tags, ..., with_anomalies=True)`` shows overlapping ``[start, end)``.

    Every :data:`ANOMALY_CYCLE` each machine gets one fault, at a machine-specific offset
    into the cycle: the kind rotates through :data:`ANOMALY_KINDS` from cycle to cycle,
    and the tag through the loops in :data:`ANOMALY_LOOPS`, every third kind. Tags whose
    loop number is not in :data:`ANOMALY_LOOPS` never get one. Sorted by start, then tag.
    """
    start_s, end_s = _seconds(start), _seconds(end)
    cycle_s = _whole_seconds(ANOMALY_CYCLE)
    longest_s = max(_whole_seconds(d) for d in ANOMALY_DURATIONS.values())
    found = []
    for tag in dict.fromkeys(tags):
        loop = _loop(tag)
        if loop not in ANOMALY_LOOPS:
            continue
        offset_s = _anomaly_offset_s(_machine(tag))
        first_cycle = (start_s - offset_s - longest_s) // cycle_s
        last_cycle = (end_s - offset_s) // cycle_s
        for cycle in range(first_cycle, last_cycle + 1):
            kind = ANOMALY_KINDS[cycle % len(ANOMALY_KINDS)]
            if ANOMALY_LOOPS[(cycle // len(ANOMALY_KINDS)) % len(ANOMALY_LOOPS)] != loop:
                continue
            begin_s = cycle * cycle_s + offset_s
            finish_s = begin_s + _whole_seconds(ANOMALY_DURATIONS[kind])
            if begin_s < end_s and finish_s > start_s:
                found.append(Anomaly(tag, kind, _second(begin_s), _second(finish_s)))
    return sorted(found, key=lambda a: (a.start, a.tag))


def in_anomaly(tags: Sequence[str], index: pd.DatetimeIndex) -> pd.Series:
    """True for each timestamp of ``index`` that lies inside a fault of one of ``tags``."""
    seconds = _index_seconds(index)
    mask = np.zeros(len(seconds), dtype=bool)
    if len(seconds):
        for anomaly in anomalies(tags, _second(int(seconds.min())), _second(int(seconds.max()) + 1)):
            mask |= (seconds >= _seconds(anomaly.start)) & (seconds < _seconds(anomaly.end))
    return pd.Series(mask, index=index, name="in_anomaly")


# ---------------------------------------------------------------- the clean process


def _clean_tag(tag: str, load: np.ndarray, ambient: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Level + span * (loadings on the machine's load and on ambient + the tag's own deviation).

    The tag's own deviation is mostly a slow wander (real residuals are autocorrelated,
    which also keeps gordo's rolling-minimum thresholds meaningful) plus a little white noise.
    """
    level, span = _tag_range(tag)
    load_weight = 0.6 + 0.4 * _unit(tag, "load-weight")
    ambient_weight = 0.5 * _unit(tag, "ambient-weight") - 0.25
    wander_size = 0.02 + 0.03 * _unit(tag, "wander-size")
    noise_sd = 0.005 + 0.01 * _unit(tag, "noise-sd")
    own = wander_size * _wander(_seed(tag, "wander"), seconds, TAG_WANDER_KNOT_S)
    own += noise_sd * _gaussian(_seed(tag, "noise"), seconds)
    return level + span * (load_weight * load + ambient_weight * ambient + own)


def _load(machine: str, t: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """The machine's load, about -1..1: daily cycle at the machine's phase plus a smooth wander."""
    phase = 2 * math.pi * _unit(machine, "load-phase")
    daily = np.sin(2 * np.pi * t / DAY_S + phase)
    return 0.5 * daily + 0.5 * _wander(_seed(machine, "load-wander"), seconds, LOAD_WANDER_KNOT_S)


def _ambient(t: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    """Site ambient temperature factor, about -1..1, warmest mid-afternoon (UTC)."""
    daily = np.sin(2 * np.pi * (t / DAY_S - 9 / 24))
    return 0.6 * daily + 0.4 * _wander(_seed("site", "ambient-wander"), seconds, AMBIENT_WANDER_KNOT_S)


def _wander(seed: int, seconds: np.ndarray, knot_s: int) -> np.ndarray:
    """Smooth value noise in -1..1: hashed values at every ``knot_s``, eased in between."""
    knot = seconds // knot_s
    frac = (seconds - knot * knot_s).astype(np.float64) / knot_s
    ease = frac * frac * (3 - 2 * frac)
    left = 2 * _uniform(seed, knot) - 1
    right = 2 * _uniform(seed, knot + 1) - 1
    return left + (right - left) * ease


# ---------------------------------------------------------------- anomalies


def _apply(anomaly: Anomaly, values: np.ndarray, seconds: np.ndarray, ambient: np.ndarray) -> None:
    """Lay ``anomaly`` onto ``values`` (the clean column of its tag, changed in place)."""
    begin_s, finish_s = _seconds(anomaly.start), _seconds(anomaly.end)
    inside = (seconds >= begin_s) & (seconds < finish_s)
    if not inside.any():
        return
    _, span = _tag_range(anomaly.tag)
    if anomaly.kind == "spike":
        values[inside] += ANOMALY_SIZE * span
    elif anomaly.kind == "drift":
        progress = (seconds[inside] - begin_s) / float(finish_s - begin_s)
        values[inside] += ANOMALY_SIZE * span * progress
    else:  # stuck: the reading freezes at the clean value of the fault's first second
        frozen = signal([anomaly.tag], anomaly.start, _second(begin_s + 1), step=timedelta(seconds=1))
        values[inside] = float(frozen.iloc[0, 0])


def _anomaly_offset_s(machine: str) -> int:
    """Where in each cycle the machine's fault starts: 2 h plus 0..2 h, on whole 10 minutes."""
    return 7_200 + 600 * int(_unit(machine, "anomaly-offset") * 12)


def _loop(tag: str) -> int | None:
    """Loop number of a tag: its last two digits (``PUMP1-PT-101`` -> 1), or None."""
    match = re.search(r"(\d+)$", tag)
    return int(match.group(1)) % 100 if match else None


# ---------------------------------------------------------------- names and hashing


def _machine(tag: str) -> str:
    """The machine a tag belongs to: its part before the first ``-``."""
    return tag.split("-", 1)[0]


def _tag_range(tag: str) -> tuple[float, float]:
    """(level, span) of a tag: its type's range, varied by up to +-20 % / +-30 % per tag."""
    parts = tag.split("-")
    code = parts[1].rstrip("0123456789") if len(parts) > 2 else ""
    level, span = TYPE_RANGES.get(code, DEFAULT_RANGE)
    return level * (0.8 + 0.4 * _unit(tag, "level")), span * (0.7 + 0.6 * _unit(tag, "span"))


def _seed(name: str, purpose: str) -> int:
    """A stable 64-bit seed for (name, purpose), the same in every process."""
    digest = hashlib.blake2b(f"{purpose}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _unit(name: str, purpose: str) -> float:
    """A stable number in [0, 1) for (name, purpose)."""
    return (_seed(name, purpose) >> 11) * _TO_UNIT


def _uniform(seed: int, keys: np.ndarray) -> np.ndarray:
    """Uniform numbers in [0, 1), one per integer key, by splitmix64 of (seed, key)."""
    with np.errstate(over="ignore"):
        x = keys.astype(np.uint64) * _GOLDEN + np.uint64(seed)
        x = (x ^ (x >> np.uint64(30))) * _MIX1
        x = (x ^ (x >> np.uint64(27))) * _MIX2
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def _gaussian(seed: int, seconds: np.ndarray) -> np.ndarray:
    """Standard normal numbers, one per second, by Box-Muller of two hashed uniforms."""
    u1 = 1.0 - _uniform(seed, seconds * 2)
    u2 = _uniform(seed, seconds * 2 + 1)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)


# ---------------------------------------------------------------- time


def _to_utc(value: TimeLike) -> datetime:
    """An aware UTC datetime from a datetime (naive = UTC) or an ISO 8601 string."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def _seconds(value: TimeLike) -> int:
    """Whole seconds since the epoch, rounded up (so a grid built from it starts at or after value)."""
    micros = (_to_utc(value) - EPOCH) // timedelta(microseconds=1)
    return -((-micros) // 1_000_000)


def _second(seconds: int | np.integer) -> datetime:
    """The UTC datetime ``seconds`` after the epoch."""
    return EPOCH + timedelta(seconds=int(seconds))


def _whole_seconds(step: timedelta) -> int:
    """A timedelta as whole seconds; refuses fractions and non-positive steps."""
    if step <= timedelta(0) or step % timedelta(seconds=1):
        raise ValueError(f"step must be a positive whole number of seconds, got {step!r}")
    return step // timedelta(seconds=1)


def _grid(start: TimeLike, end: TimeLike, step: timedelta) -> np.ndarray:
    """Seconds since the epoch of the multiples of ``step`` in ``[start, end)``, as int64."""
    step_s = _whole_seconds(step)
    first = -((-_seconds(start)) // step_s) * step_s
    return np.arange(first, _seconds(end), step_s, dtype=np.int64)


def _index_seconds(index: pd.DatetimeIndex) -> np.ndarray:
    """Whole seconds since the epoch (rounded down) of a naive (= UTC) or aware DatetimeIndex."""
    if index.tz is None:
        index = index.tz_localize("UTC")
    since_epoch = index - pd.Timestamp(0, tz="UTC")
    return np.asarray(since_epoch // pd.Timedelta(seconds=1), dtype=np.int64)
