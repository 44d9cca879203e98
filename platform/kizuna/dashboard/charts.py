"""Small inline SVG charts: server-rendered, so the page needs no script or build step."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT, PAD = 320, 90, 14


def _scale(values: Sequence[float], low: float | None = None) -> tuple[float, float]:
    lo = min(values) if low is None else low
    hi = max(values)
    return lo, (hi - lo) or 1.0


def line(points: Sequence[tuple[float, float]], *, label: str) -> str:
    """A polyline of (x, y) points with the last value written at its end."""
    if not points:
        return '<span class="muted">no data</span>'
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, dx = _scale(xs)
    y0, dy = _scale(ys)
    coords = " ".join(
        f"{PAD + (x - x0) / dx * (WIDTH - 2 * PAD):.1f},"
        f"{HEIGHT - PAD - (y - y0) / dy * (HEIGHT - 2 * PAD):.1f}"
        for x, y in points
    )
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}"><polyline fill="none" stroke="currentColor" '
        f'stroke-width="2" points="{coords}"/><text x="{WIDTH - PAD}" y="{PAD}" '
        f'text-anchor="end">{ys[-1]:.3g}</text></svg>'
    )


def bars(counts: Sequence[int], edges: Sequence[float], *, label: str) -> str:
    """A histogram: ``counts[i]`` between ``edges[i]`` and ``edges[i + 1]``."""
    if not counts or not any(counts):
        return '<span class="muted">no data</span>'
    top = max(counts)
    width = (WIDTH - 2 * PAD) / len(counts)
    rects = "".join(
        f'<rect x="{PAD + i * width:.1f}" y="{HEIGHT - PAD - c / top * (HEIGHT - 2 * PAD):.1f}" '
        f'width="{width - 1:.1f}" height="{c / top * (HEIGHT - 2 * PAD):.1f}">'
        f"<title>{edges[i]:.2f}–{edges[i + 1]:.2f}: {c}</title></rect>"
        for i, c in enumerate(counts)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}">{rects}<text x="{PAD}" y="{HEIGHT - 2}">'
        f'{edges[0]:.1f}</text><text x="{WIDTH - PAD}" y="{HEIGHT - 2}" text-anchor="end">'
        f"{edges[-1]:.1f}</text></svg>"
    )


def histogram(values: Sequence[float], *, bins: int = 12) -> tuple[list[int], list[float]]:
    """Counts and edges of ``values`` in equal-width bins."""
    if not values:
        return [], []
    lo, span = _scale(values)
    edges = [lo + span * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for value in values:
        counts[min(int((value - lo) / span * bins), bins - 1)] += 1
    return counts, edges
