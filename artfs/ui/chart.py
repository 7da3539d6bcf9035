"""A line chart of one numeric metadata key across versions, as SVG geometry the template
draws: computed on the server so the page needs no charting script."""

from __future__ import annotations

from dataclasses import dataclass

WIDTH, HEIGHT = 720, 260
#: Room for the value labels on the left and the version labels below.
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 36
Y_TICKS = 5


@dataclass
class Point:
    x: float
    y: float
    version: int
    value: float


@dataclass
class Chart:
    key: str
    points: list[Point]
    #: The SVG path through every point, oldest version first: "M x y L x y …".
    path: str
    y_ticks: list[tuple[float, str]]
    x_ticks: list[tuple[float, str]]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def line_chart(key: str, values: list[tuple[int, float]]) -> Chart:
    """`values` are (version number, value) pairs; x is the version number, so a version
    without the key leaves a longer segment rather than a misleading even spacing."""
    values = sorted(values)
    versions = [v for v, _ in values]
    ys = [y for _, y in values]
    lo_v, hi_v = (versions[0], versions[-1]) if versions else (0, 1)
    lo_y, hi_y = (min(ys), max(ys)) if ys else (0.0, 1.0)
    if lo_y == hi_y:
        pad = abs(lo_y) * 0.1 or 1.0
        lo_y, hi_y = lo_y - pad, hi_y + pad
    span_x = WIDTH - RIGHT - LEFT
    span_y = HEIGHT - BOTTOM - TOP

    def x_of(version: int) -> float:
        if hi_v == lo_v:
            return LEFT + span_x / 2
        return LEFT + span_x * (version - lo_v) / (hi_v - lo_v)

    def y_of(value: float) -> float:
        return TOP + span_y * (hi_y - value) / (hi_y - lo_y)

    points = [Point(round(x_of(v), 1), round(y_of(y), 1), v, y) for v, y in values]
    path = " ".join(f"{'M' if i == 0 else 'L'} {p.x} {p.y}" for i, p in enumerate(points))
    y_ticks = [(round(y_of(lo_y + (hi_y - lo_y) * i / (Y_TICKS - 1)), 1),
                f"{lo_y + (hi_y - lo_y) * i / (Y_TICKS - 1):.4g}") for i in range(Y_TICKS)]
    step = max(1, len(points) // 10)
    x_ticks = [(p.x, f"v{p.version}") for p in points[::step]]
    return Chart(key, points, path, y_ticks, x_ticks)
