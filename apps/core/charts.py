"""Stacked bar charts of values per day, drawn on the server as SVG by the templates
(templates/llm/usage.html, templates/billing/page.html): no chart library in the browser."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

PALETTE = ("#3b5bdb", "#2b8a3e", "#e67700", "#c2255c", "#1098ad", "#7048e8", "#5c940d", "#868e96")


@dataclass(frozen=True)
class Segment:
    day: date
    series: str
    x: float
    y: float
    width: float
    height: float
    color: str
    label: str


@dataclass(frozen=True)
class Tick:
    y: float
    label: str


@dataclass(frozen=True)
class DayLabel:
    x: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    left: int
    top: int
    bottom: float  # the y of the x axis
    right: int
    segments: list[Segment]
    ticks: list[Tick]
    days: list[DayLabel]
    legend: list[tuple[str, str]]  # (label, color)
    title: str


def stacked_chart(
    values: dict[date, dict[str, Decimal]],
    *,
    series: list[str],
    labels: dict[str, str],
    first: date,
    last: date,
    title: str,
    value_text: Callable[[Decimal], str],
) -> Chart:
    """Stacked bars, one a day from `first` to `last`, one colour a series."""
    calendar = [first + timedelta(days=offset) for offset in range((last - first).days + 1)]
    colors = {name: PALETTE[index % len(PALETTE)] for index, name in enumerate(series)}
    peak = max(
        (sum(values.get(day, {}).values(), Decimal(0)) for day in calendar),
        default=Decimal(0),
    )
    width, height, left, top, right, bottom_margin = 760, 260, 72, 12, 8, 28
    bottom = float(height - bottom_margin)
    plot_width, plot_height = width - left - right, bottom - top
    slot = plot_width / len(calendar)
    bar = max(slot * 0.7, 1.0)
    scale = plot_height / float(peak) if peak > 0 else 0.0
    segments = []
    for index, day in enumerate(calendar):
        x = left + index * slot + (slot - bar) / 2
        stacked = 0.0
        for name in series:
            value = values.get(day, {}).get(name)
            if not value:
                continue
            segment_height = max(float(value) * scale, 1.0)
            stacked += segment_height
            segments.append(
                Segment(
                    day=day,
                    series=name,
                    x=round(x, 2),
                    y=round(bottom - stacked, 2),
                    width=round(bar, 2),
                    height=round(segment_height, 2),
                    color=colors[name],
                    label=f"{day.isoformat()} · {labels.get(name, name)}: {value_text(value)}",
                )
            )
    ticks = [
        Tick(y=round(bottom - plot_height * fraction, 2), label=value_text(peak * Decimal(fraction)))
        for fraction in (0, 0.5, 1)
    ]
    every = max(1, math.ceil(len(calendar) / 10))
    day_labels = [
        DayLabel(x=round(left + index * slot + slot / 2, 2), label=day.strftime("%b %d"))
        for index, day in enumerate(calendar)
        if (len(calendar) - 1 - index) % every == 0
    ]
    return Chart(
        width=width,
        height=height,
        left=left,
        top=top,
        bottom=bottom,
        right=width - right,
        segments=segments,
        ticks=ticks,
        days=day_labels,
        legend=[(labels.get(name, name), colors[name]) for name in series],
        title=title,
    )
