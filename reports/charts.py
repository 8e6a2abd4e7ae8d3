"""Charts drawn as SVG, for report templates (WeasyPrint renders inline SVG)."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape


@dataclass(frozen=True)
class Series:
    label: str
    colour: str
    values: list[int]


def stacked_bars(
    labels: list[str], series: list[Series], width: int = 640, height: int = 220
) -> str:
    """A stacked bar chart: one bar per label, one coloured segment per series."""
    left, bottom, top = 40, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    totals = [sum(s.values[i] for s in series) for i in range(len(labels))]
    peak = max(totals, default=0) or 1
    slot = plot_w / max(len(labels), 1)
    bar_w = max(slot * 0.7, 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="Jobs per day">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" '
        'stroke="#555" stroke-width="1"/>',
        f'<text x="{left - 4}" y="{top + 8}" font-size="9" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" font-size="9" text-anchor="end">0</text>',
    ]
    label_every = max(1, len(labels) // 12)
    for i, label in enumerate(labels):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for s in series:
            h = plot_h * s.values[i] / peak
            if h > 0:
                y -= h
                parts.append(
                    f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w:.1f}" height="{h:.1f}" '
                    f'fill="{s.colour}"/>'
                )
        if i % label_every == 0:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{height - bottom + 14}" font-size="8" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    for j, s in enumerate(series):
        lx = left + j * 110
        parts.append(
            f'<rect x="{lx}" y="{height - 10}" width="8" height="8" fill="{s.colour}"/>'
            f'<text x="{lx + 12}" y="{height - 3}" font-size="9">{escape(s.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
