"""Small charts rendered on the server as inline SVG: no script, no external asset.

Guarantees: `bars` draws one bar per value, scaled to the series' own maximum (a flat series
of zeros draws a baseline), with an accessible name that states what it shows and its figures
(total and peak), so the chart is readable without seeing it. Only numbers and the caller's
label (escaped) reach the markup.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 180, 36


def bars(values: Sequence[int], label: str, css_class: str) -> Markup:
    """A bar chart of `values` (oldest first), e.g. messages per minute over the last hour."""
    count = max(1, len(values))
    peak = max(values, default=0)
    step = WIDTH / count
    total = sum(values)
    name = f"{label}: {total} in all, peak {peak} per minute"
    parts = [
        f'<svg class="chart {escape(css_class)}" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(name)}"><title>{escape(name)}</title>',
        f'<line x1="0" y1="{HEIGHT - 0.5}" x2="{WIDTH}" y2="{HEIGHT - 0.5}" class="baseline"/>',
    ]
    for index, value in enumerate(values):
        if value and peak:
            height = max(1.0, (HEIGHT - 2) * value / peak)
            x = index * step
            parts.append(
                f'<rect x="{x:.1f}" y="{HEIGHT - 1 - height:.1f}" width="{max(1.0, step - 1):.1f}" '
                f'height="{height:.1f}"/>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - built from numbers and escaped text only
