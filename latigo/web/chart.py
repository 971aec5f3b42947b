"""Chart geometry: scales, ticks, downsampling and where each line, label and window
strip of an SVG chart lies. Pure arithmetic on points and moments; the ``chart.html``
template only draws what ``geometry`` computed, so the page needs no charting script.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

# the most points drawn per chart line; more are reduced to each bucket's largest value, so spikes stay
MAX_POINTS = 1500


def nice_step(span: float, target: int) -> float:
    """A step of 1, 2 or 5 times a power of ten giving about ``target`` ticks over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / max(1, target)
    power = 10 ** math.floor(math.log10(raw))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= raw)


def value_ticks(high: float, target: int = 4) -> list[float]:
    """Ticks from 0 up to the first one at or above ``high``."""
    step = nice_step(high, target)
    count = max(1, math.ceil(high / step - 1e-9))
    return [round(step * index, 10) for index in range(count + 1)]


# candidate spacings of a chart's time ticks
TIME_STEPS = tuple(timedelta(minutes=minutes) for minutes in (10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880))


def time_ticks(start: datetime, end: datetime, target: int = 8) -> list[datetime]:
    """Round UTC moments (whole hours, midnights, ...) inside ``[start, end]``, about ``target`` of them."""
    span = end - start
    step = next((step for step in TIME_STEPS if span / step <= target), TIME_STEPS[-1])
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    tick = epoch + math.ceil((start - epoch) / step) * step
    ticks = []
    while tick <= end:
        ticks.append(tick)
        tick += step
    return ticks


def tick_label(moment: datetime) -> str:
    return moment.strftime("%d %b") if moment.hour == 0 and moment.minute == 0 else moment.strftime("%H:%M")


@dataclass(frozen=True)
class Scale:
    """A linear map from a domain to pixels."""

    low: float
    high: float
    pixel_low: float
    pixel_high: float

    def __call__(self, value: float) -> float:
        if self.high == self.low:
            return self.pixel_low
        return self.pixel_low + (value - self.low) * (self.pixel_high - self.pixel_low) / (self.high - self.low)


# one value of a series at its moment
Point = tuple[datetime, float]


def downsample(points: Sequence[Point], limit: int = MAX_POINTS) -> list[Point]:
    """At most about ``limit`` points: consecutive buckets each keep their largest value
    (an anomaly spike must survive the reduction)."""
    if len(points) <= limit:
        return list(points)
    size = math.ceil(len(points) / limit)
    return [max(points[index : index + size], key=lambda point: point[1]) for index in range(0, len(points), size)]


def segments(points: Sequence[Point], max_gap: timedelta) -> list[list[Point]]:
    """The points split where more than ``max_gap`` separates two of them, so missing
    windows show as gaps rather than as a straight line across."""
    runs: list[list[Point]] = []
    for point in points:
        if runs and point[0] - runs[-1][-1][0] <= max_gap:
            runs[-1].append(point)
        else:
            runs.append([point])
    return runs


# a chart's size in SVG units and its margins (left for the value labels, bottom for the times)
CHART_WIDTH, CHART_HEIGHT = 1100, 200
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 10, 22
# height of the strip of window states under the first chart
STRIP_HEIGHT = 10


@dataclass(frozen=True)
class Tick:
    """A grid line and its label: ``at`` is a pixel (y for values, x for times)."""

    at: float
    label: str


@dataclass(frozen=True)
class Bar:
    """A rectangle of the window strip, in pixels, with the window's payload (its cell)."""

    left: float
    width: float
    payload: object


@dataclass(frozen=True)
class Chart:
    """Where everything of one chart lies, in SVG units."""

    width: int
    height: int
    left: int
    right: int
    top: int
    bottom: int
    values: list[Tick]
    times: list[Tick]
    threshold: float | None
    # runs of two or more points, as "x,y x,y ..." polylines
    lines: list[str] = field(default_factory=list)
    # points standing alone (a gap on either side), as (x, y)
    dots: list[tuple[float, float]] = field(default_factory=list)
    bars: list[Bar] = field(default_factory=list)
    strip_top: int = 0
    strip_height: int = STRIP_HEIGHT


def geometry(
    points: Sequence[Point],
    start: datetime,
    end: datetime,
    gap: timedelta,
    threshold: float | None = None,
    strip: Sequence[tuple[datetime, datetime, object]] = (),
) -> Chart:
    """A line chart of ``points`` over ``[start, end)``: value and time axes, a threshold
    line, and optionally a strip of windows (start, end, payload) under the time axis."""
    points = downsample(points)
    high = max([value for _, value in points] + [threshold or 0.0, 1e-9])
    ticks = value_ticks(high * 1.05)
    bottom = CHART_HEIGHT - MARGIN_BOTTOM
    x = Scale(start.timestamp(), end.timestamp(), MARGIN_LEFT, CHART_WIDTH - MARGIN_RIGHT)
    y = Scale(0.0, ticks[-1], bottom, MARGIN_TOP)
    chart = Chart(
        width=CHART_WIDTH,
        height=CHART_HEIGHT + (STRIP_HEIGHT + 6 if strip else 0),
        left=MARGIN_LEFT,
        right=CHART_WIDTH - MARGIN_RIGHT,
        top=MARGIN_TOP,
        bottom=bottom,
        values=[Tick(y(tick), f"{tick:g}") for tick in ticks],
        times=[Tick(x(moment.timestamp()), tick_label(moment)) for moment in time_ticks(start, end)],
        threshold=None if threshold is None else y(threshold),
        strip_top=CHART_HEIGHT + 2,
    )
    for run in segments(points, gap):
        if len(run) == 1:
            moment, value = run[0]
            chart.dots.append((x(moment.timestamp()), y(value)))
        else:
            chart.lines.append(" ".join(f"{x(moment.timestamp()):.1f},{y(value):.1f}" for moment, value in run))
    for window_start, window_end, payload in strip:
        left, right = x(max(window_start, start).timestamp()), x(min(window_end, end).timestamp())
        chart.bars.append(Bar(left, max(0.5, right - left - 0.6), payload))
    return chart
