"""The HTML report of a finished experiment: the state used, the cost, every image (per mode
and dose), the ensemble's standard-deviation maps, and the SNR of a chosen feature against
dose with the dose at which it becomes visible (Rose: SNR 5)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from simulations import array_png

#: Doses of the SNR table [e/Å²].
DOSES = (1e1, 1e2, 1e3, 1e4, 1e5, 1e6)
ROSE_SNR = 5.0


def feature_snr(
    image: np.ndarray, pixel_area: float, box: tuple[int, int, int, int] | None
) -> tuple[float, float]:
    """(SNR at 1 e/Å², dose [e/Å²] for SNR 5) of a feature against its surroundings in a
    noise-free image whose pixels hold the fraction of the beam they receive.

    The feature is ``box`` (x0, y0, x1, y1 in pixels; default: the brightest tenth of the
    pixels). With contrast ``C = |mean(feature) - mean(rest)|`` and ``n`` feature pixels,
    Poisson noise gives ``SNR(d) = C sqrt(n d a / mean(image))``, ``a`` the pixel area."""
    if box is None:
        mask = image >= np.quantile(image, 0.9)
    else:
        mask = np.zeros(image.shape, dtype=bool)
        x0, y0, x1, y1 = box
        mask[max(0, x0) : max(0, x1), max(0, y0) : max(0, y1)] = True
    if not mask.any() or mask.all():
        return 0.0, math.inf
    contrast = abs(float(image[mask].mean() - image[~mask].mean()))
    mean = float(image.mean())
    if contrast == 0 or mean <= 0:
        return 0.0, math.inf
    per_unit_dose = contrast * math.sqrt(mask.sum() * pixel_area / mean)
    return per_unit_dose, (ROSE_SNR / per_unit_dose) ** 2


def _png(array: np.ndarray) -> str:
    return base64.b64encode(array_png(array)).decode()


def render_report(
    experiment: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    axes: Mapping[str, Mapping[str, list[Any]]],
    box: tuple[int, int, int, int] | None = None,
) -> str:
    """The report as one self-contained HTML page (images inline as PNG)."""
    e = html.escape
    state = (experiment.get("state") or {}).get("state", {})
    cost = experiment.get("cost") or {}
    rows = "".join(
        f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in sorted(state.items())
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Experiment {e(experiment['id'])}</title>",
        "<style>body{font-family:sans-serif;margin:2em}figure{display:inline-block;margin:.5em}"
        "img{image-rendering:pixelated;width:256px}td,th{padding:2px 8px;text-align:left}"
        "</style></head><body>",
        f"<h1>Virtual experiment {e(experiment['id'])}</h1>",
        f"<p>{e(str(experiment.get('status')))}; instrument "
        f"{e(str(experiment.get('instrument_id')))}; mode "
        f"{e(str((experiment.get('spec') or {}).get('mode', {}).get('mode')))}; estimated "
        f"{cost.get('seconds', 0):.1f} s, {cost.get('memory_bytes', 0) / 2**20:.0f} MiB</p>",
        f"<h2>State used</h2><table>{rows}</table>",
    ]
    images = {n: a for n, a in arrays.items() if a.ndim == 2}
    sections = (
        ("Images", [n for n in images if "_dose" not in n and not n.endswith("_std")]),
        ("Poisson realisations per dose", [n for n in images if "_dose" in n]),
        ("Ensemble standard deviation", [n for n in images if n.endswith("_std")]),
    )
    for title, names in sections:
        if not names:
            continue
        parts.append(f"<h2>{title}</h2>")
        for name in sorted(names):
            parts.append(
                f"<figure><img alt='{e(name)}' src='data:image/png;base64,{_png(images[name])}'>"
                f"<figcaption>{e(name)}</figcaption></figure>"
            )
    base = [n for n in images if "_dose" not in n and not n.endswith("_std")]
    base = [n for n in base if not n.startswith(("com_", "pattern")) and "dpc" not in n]
    if base:
        parts.append("<h2>SNR of the feature against dose</h2><table><tr><th>image</th>")
        parts += [f"<th>{d:g} e/Å²</th>" for d in DOSES] + ["<th>visible from</th></tr>"]
        for name in sorted(base):
            sampling = axes.get(name, {}).get("sampling", [1.0, 1.0])
            unit, visible = feature_snr(images[name], float(sampling[-1] * sampling[-2]), box)
            cells = "".join(f"<td>{unit * math.sqrt(d):.3g}</td>" for d in DOSES)
            parts.append(
                f"<tr><th>{e(name)}</th>{cells}<td>{visible:.3g} e/Å² (SNR {ROSE_SNR:g})</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
