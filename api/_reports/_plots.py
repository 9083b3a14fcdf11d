"""Plots of the key channels (matplotlib), drawn the same way into the HTML page (inline SVG)
and the PDF pages. matplotlib's settings are process-global: ``RENDER_LOCK`` lets one figure
be rendered at a time."""

from __future__ import annotations

import io
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Fixed so the SVG element ids (hashed with the salt) are the same on every run.
_SVG_HASH_SALT = "beamtwin-report"
_SEVERITY_COLOURS = {"critical": "#c0392b", "warning": "#e67e22", "info": "#2980b9"}
# matplotlib's rcParams are process-global: render one figure at a time.
RENDER_LOCK = threading.Lock()


def draw_axes(ax: Any, plot: Mapping[str, Any], span_s: float) -> None:
    """One key channel on ``ax``: the min-max band and the mean of each bucket, and a dashed
    vertical line per flag on the channel (or on no channel), coloured by severity. The time
    axis is in minutes, or hours for a period over three hours (``span_s`` [s])."""
    hours = span_s > 3 * 3600
    scale = 3600.0 if hours else 60.0

    def column(key: str) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in plot[key]], dtype=float)

    t = column("t_s") / scale
    if len(t):
        ax.fill_between(
            t, column("min"), column("max"), color="#9ecae1", linewidth=0, label="min to max"
        )
        ax.plot(t, column("mean"), color="#08519c", linewidth=0.8, label="mean")
    seen: set[str] = set()
    for mark in plot["flags"]:
        colour = _SEVERITY_COLOURS.get(mark["severity"], "#555555")
        label = None if mark["severity"] in seen else f"flag ({mark['severity']})"
        seen.add(mark["severity"])
        ax.axvline(mark["t_s"] / scale, color=colour, linewidth=0.8, linestyle="--", label=label)
    ax.set_xlim(0, span_s / scale)
    ax.set_xlabel("hours since period start" if hours else "minutes since period start")
    ax.set_ylabel(f"[{plot['unit']}]")
    ax.set_title(plot["channel"], fontsize=10)
    ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 4))
    if len(t) or plot["flags"]:
        ax.legend(fontsize=7, loc="upper right")


def _svg_rc() -> Any:
    """Settings of the SVG plots: element ids from a fixed salt, text kept as text."""
    return {
        "svg.hashsalt": _SVG_HASH_SALT,
        "svg.fonttype": "none",
        "font.family": "DejaVu Sans",
        "path.simplify": True,
    }


def svg(plot: Mapping[str, Any], span_s: float) -> str:
    """One key channel as an ``<svg>`` element to inline in HTML (``span_s`` [s])."""
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    with RENDER_LOCK, matplotlib.rc_context(_svg_rc()):
        fig = Figure(figsize=(8.0, 2.6), dpi=100)
        FigureCanvasSVG(fig)
        draw_axes(fig.add_subplot(), plot, span_s)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "beamtwin"})
    text = buffer.getvalue()
    # Inline in HTML: drop the XML declaration and DOCTYPE.
    return text[text.index("<svg") :]
