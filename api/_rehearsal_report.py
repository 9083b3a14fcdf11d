"""The HTML report of a finished rehearsal: learning curves (fraction of the top region found,
RMSE of the property map) of every strategy against the number of measurements, the points
the DKL run chose drawn on the HAADF overview, the prediction maps, and the per-step latency.
Plots are inline SVG; images inline PNG."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from simulations import array_png

COLOURS = {"dkl": "#c0392b", "random": "#7f8c8d", "raster": "#2980b9"}
W, H, PAD = 420, 260, 40


def _png(array: np.ndarray) -> str:
    return base64.b64encode(array_png(array)).decode()


def _line_plot(title: str, series: Mapping[str, np.ndarray], ylabel: str) -> str:
    """An SVG line plot of y against measurement number, one line per series."""
    finite = [s[np.isfinite(s)] for s in series.values() if np.isfinite(s).any()]
    if not finite:
        return ""
    n = max(len(s) for s in series.values())
    top = max(float(s.max()) for s in finite) or 1.0
    parts = [
        f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
        f"role='img' aria-label='{html.escape(title)}'>",
        f"<rect x='{PAD}' y='10' width='{W - PAD - 10}' height='{H - PAD - 10}' "
        "fill='none' stroke='#999'/>",
        f"<text x='{PAD}' y='{H - 8}' font-size='11'>measurements (0..{n})</text>",
        f"<text x='2' y='20' font-size='11'>{html.escape(ylabel)} (0..{top:.3g})</text>",
    ]
    for name, values in series.items():
        points = [
            f"{PAD + (W - PAD - 10) * (i + 1) / n:.1f},"
            f"{H - PAD - (H - PAD - 20) * float(v) / top:.1f}"
            for i, v in enumerate(values)
            if math.isfinite(float(v))
        ]
        colour = COLOURS.get(name, "#000")
        parts.append(
            f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' "
            f"points='{' '.join(points)}'><title>{html.escape(name)}</title></polyline>"
        )
    legend = " ".join(
        f"<span style='color:{COLOURS.get(k, '#000')}'>&#9632; {html.escape(k)}</span>"
        for k in series
    )
    parts.append(f"</svg><figcaption>{html.escape(title)}: {legend}</figcaption></figure>")
    return "".join(parts)


def _points_on_overview(haadf: np.ndarray, ix: np.ndarray, iy: np.ndarray) -> str:
    """The overview with the chosen positions (x down the image's rows, as stored)."""
    size = 384
    nx, ny = haadf.shape
    scale_x, scale_y = size / nx, size / ny
    circles = "".join(
        f"<circle cx='{(y + 0.5) * scale_y:.1f}' cy='{(x + 0.5) * scale_x:.1f}' r='2.5' "
        f"fill='none' stroke='{'#f1c40f' if k >= 0 else '#000'}'>"
        f"<title>{k + 1}: ({int(x)}, {int(y)})</title></circle>"
        for k, (x, y) in enumerate(zip(ix, iy, strict=True))
    )
    return (
        f"<figure><svg xmlns='http://www.w3.org/2000/svg' width='{size}' height='{size}' "
        "role='img' aria-label='chosen points on the HAADF overview'>"
        f"<image href='data:image/png;base64,{_png(haadf)}' width='{size}' height='{size}' "
        "preserveAspectRatio='none' style='image-rendering:pixelated'/>"
        f"{circles}</svg><figcaption>HAADF overview with the {len(ix)} DKL measurements "
        "(rows: x, columns: y)</figcaption></figure>"
    )


def render_rehearsal_report(rehearsal: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """The report as one self-contained HTML page."""
    e = html.escape
    spec = rehearsal.get("spec") or {}
    strategies = [s for s in ("dkl", "random", "raster") if f"{s}_found_fraction" in arrays]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Rehearsal {e(str(rehearsal.get('id')))}</title>",
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:.5em}"
        "img{image-rendering:pixelated;width:256px}td,th{padding:2px 8px;text-align:left}"
        "</style></head><body>",
        f"<h1>Rehearsal {e(str(rehearsal.get('id')))}</h1>",
        f"<p>{e(str(rehearsal.get('status')))}; scene {e(str(spec.get('scene')))}; property "
        f"{e(str(spec.get('property')))}; acquisition {e(str(spec.get('acquisition')))}; patch "
        f"{e(str(spec.get('patch')))}; dose {e(str(spec.get('dose')))} e/Å²; seed "
        f"{e(str(spec.get('seed')))}</p>",
        "<h2>Summary</h2><table><tr><th>strategy</th><th>measurements</th>"
        "<th>top region found</th><th>measurements to 90%</th><th>final RMSE</th></tr>",
    ]
    for name in strategies:
        found = arrays[f"{name}_found_fraction"]
        rmse = arrays.get(f"{name}_rmse", np.array([np.nan]))
        reached = np.flatnonzero(found >= 0.9 - 1e-12)
        to_90 = str(int(reached[0]) + 1) if len(reached) else "not reached"
        last_rmse = rmse[np.isfinite(rmse)]
        parts.append(
            f"<tr><th>{e(name)}</th><td>{len(found)}</td><td>{float(found[-1]):.1%}</td>"
            f"<td>{to_90}</td><td>{float(last_rmse[-1]) if len(last_rmse) else math.nan:.4g}"
            "</td></tr>"
        )
    parts.append("</table><h2>Learning curves</h2>")
    parts.append(
        _line_plot(
            "fraction of the top region found",
            {s: arrays[f"{s}_found_fraction"] for s in strategies},
            "fraction found",
        )
    )
    parts.append(
        _line_plot(
            "RMSE of the property map",
            {s: arrays[f"{s}_rmse"] for s in strategies if f"{s}_rmse" in arrays},
            "RMSE",
        )
    )
    if "haadf" in arrays and "dkl_ix" in arrays:
        parts.append("<h2>Chosen points</h2>")
        parts.append(_points_on_overview(arrays["haadf"], arrays["dkl_ix"], arrays["dkl_iy"]))
        for name in ("truth", "prediction_mean", "prediction_sd"):
            if name in arrays:
                parts.append(
                    f"<figure><img alt='{name}' src='data:image/png;base64,{_png(arrays[name])}'>"
                    f"<figcaption>{name}</figcaption></figure>"
                )
    if "dkl_latency_s" in arrays:
        latency = arrays["dkl_latency_s"]
        parts.append("<h2>Per-step latency</h2>")
        parts.append(
            _line_plot("DKL step latency (fit + predict + acquire)", {"dkl": latency}, "s")
        )
        model_steps = latency[latency > 0]
        if len(model_steps):
            parts.append(
                f"<p>median {float(np.median(model_steps)):.3f} s, largest "
                f"{float(model_steps.max()):.3f} s over {len(model_steps)} model steps</p>"
            )
    parts.append("</body></html>")
    return "".join(parts)
