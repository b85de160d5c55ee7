"""Server-drawn SVG bar charts: the geometry only; templates draw the rectangles.

Drawn on the server so a dashboard's usage chart needs no script and no chart library.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
HEIGHT = 180
LEFT = 44  # room for the y labels
BOTTOM = 22  # room for the x labels


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str
    value: int


@dataclass(frozen=True)
class BarChart:
    bars: list[Bar]
    ticks: list[tuple[float, str]]  # (y, label) of horizontal grid lines
    x_labels: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    plot_bottom: int = HEIGHT - BOTTOM

    @property
    def empty(self) -> bool:
        return not any(bar.value for bar in self.bars)


def _nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 x 10^n at or above ``value`` (at least 1)."""
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _short(value: int) -> str:
    for limit, suffix in ((1_000_000_000, "G"), (1_000_000, "M"), (1_000, "k")):
        if value >= limit:
            return f"{value / limit:g}{suffix}"
    return str(value)


def bar_chart(points: Sequence[tuple[str, int]], *, every: int = 6) -> BarChart:
    """Bars for ``[(label, value), ...]``; every ``every``-th label is printed under its bar."""
    top = _nice_max(max((v for _, v in points), default=0))
    plot_height = HEIGHT - BOTTOM - 8
    slot = (WIDTH - LEFT) / max(len(points), 1)
    bars = []
    x_labels = []
    for i, (label, value) in enumerate(points):
        height = plot_height * value / top
        x = LEFT + i * slot
        bars.append(
            Bar(
                x=round(x + slot * 0.15, 2),
                y=round(HEIGHT - BOTTOM - height, 2),
                width=round(slot * 0.7, 2),
                height=round(height, 2),
                label=label,
                value=value,
            )
        )
        if i % every == 0:
            x_labels.append((round(x + slot / 2, 2), label))
    ticks = [
        (round(HEIGHT - BOTTOM - plot_height * f, 2), _short(int(top * f))) for f in (0, 0.5, 1)
    ]
    return BarChart(bars=bars, ticks=ticks, x_labels=x_labels)
