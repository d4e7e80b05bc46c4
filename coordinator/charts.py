"""Small inline SVG line charts for the status page (no JavaScript, no external assets)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["line_chart"]

#: colour-blind-safe palette (Okabe-Ito), cycled over the series
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


def _ticks(lo: float, hi: float) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / 2))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= 5:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_chart(title: str, series: Mapping[str, Sequence[tuple[float, float]]], *, width: int = 360,
               height: int = 180, y_range: tuple[float, float] | None = None) -> str:
    """An SVG line chart of ``series`` (name -> [(x, y), ...]), with axes, ticks and a legend.

    Parameters
    ----------
    title : str
        Shown above the plot (escaped).
    series : mapping
        Points per series name; NaN or missing values are skipped.
    width, height : int
        Pixels.
    y_range : (float, float), optional
        Fixed y axis (e.g. (0, 1) for AUC); default: the data's range.

    Returns
    -------
    str
        An ``<svg>`` element; every text in it is escaped.
    """
    clean = {k: [(float(x), float(y)) for x, y in v if y is not None and math.isfinite(float(y))]
             for k, v in series.items()}
    pts = [p for v in clean.values() for p in v]
    left, right, top, bottom = 42, 10, 22, 26
    pw, ph = width - left - right, height - top - bottom
    head = (f'<svg class="chart" role="img" aria-label="{escape(title)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
            f'<text x="{left}" y="14" font-size="12" font-weight="bold">{escape(title)}</text>')
    if not pts:
        return head + f'<text x="{left}" y="{top + ph / 2}" font-size="11" fill="#666">no data yet</text></svg>'
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = y_range if y_range else (min(ys), max(ys))
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 == y0:
        y0, y1 = y0 - 0.5, y1 + 0.5

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph

    out = [head, f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>'
                   f'<text x="{left - 4}" y="{sy(t) + 4:.1f}" font-size="10" text-anchor="end">{t:.3g}</text>')
    for t in _ticks(x0, x1):
        if float(t).is_integer():
            out.append(f'<text x="{sx(t):.1f}" y="{height - 12}" font-size="10" text-anchor="middle">{t:.0f}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 1}" font-size="10" text-anchor="middle">round</text>')
    for i, (name, v) in enumerate(sorted(clean.items())):
        colour = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(v))
        out.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{path}"/>')
        out.extend(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{colour}"/>' for x, y in v)
        out.append(f'<text x="{left + pw - 4}" y="{top + 12 + 12 * i}" font-size="10" text-anchor="end" '
                   f'fill="{colour}">{escape(name[:40])}</text>')
    out.append("</svg>")
    return "".join(out)
