"""The HTML report of a calibration or forecast job: one self-contained page, plots inline as
SVG (matplotlib, drawn under the reports' render lock).

Calibration: each constant's posterior marginal (histogram of the draws) against its prior
(the calibration in force, widened), the 90 % credible interval, the table of constants with
R-hat and effective sample size, the posterior predictive check, the measurements used and
those left out. Forecast: the data window and the predictive band (5-95 % and 25-75 %, the
median) over the horizons, the tolerance around the last value, the probability of staying
within it.
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from api._forecast_answers import DEFAULT_HORIZONS_S, forecast_document, forecast_model
from api._reports._plots import RENDER_LOCK

_STYLE = (
    "<style>body{font-family:sans-serif;margin:2em;max-width:70em}td,th{padding:2px 8px;"
    "text-align:left}table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}"
    ".bad{color:#c0392b}.ok{color:#1e8449}</style>"
)
_RC: dict[str, Any] = {
    "svg.hashsalt": "beamtwin-report",
    "svg.fonttype": "none",
    "font.family": "DejaVu Sans",
}


def _svg(draw: Any, size: tuple[float, float]) -> str:
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure

    with RENDER_LOCK, matplotlib.rc_context(_RC):  # type: ignore[arg-type]
        fig = Figure(figsize=size, dpi=100)
        FigureCanvasSVG(fig)
        draw(fig)
        fig.tight_layout()
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "beamtwin"})
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(title: str, parts: list[str]) -> str:
    e = html.escape
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
        f"{_STYLE}</head><body><h1>{e(title)}</h1>{''.join(parts)}</body></html>"
    )


# ---------------------------------------------------------------------------- calibration
def _marginals(post: Mapping[str, Any], draws: np.ndarray) -> str:
    constants, units = post["constants"], post["units"]
    prior_mean, prior_sd = np.asarray(post["prior_mean"]), np.asarray(post["prior_sd"])
    columns = min(3, len(constants))
    rows = math.ceil(len(constants) / columns)

    def draw(fig: Any) -> None:
        for j, name in enumerate(constants):
            ax = fig.add_subplot(rows, columns, j + 1)
            x = draws[:, j]
            lo, hi = np.quantile(x, [0.05, 0.95])
            ax.hist(x, bins=40, density=True, color="#9ecae1", label="posterior")
            span = np.linspace(
                min(x.min(), prior_mean[j] - 3 * prior_sd[j]),
                max(x.max(), prior_mean[j] + 3 * prior_sd[j]),
                200,
            )
            density = np.exp(-0.5 * ((span - prior_mean[j]) / prior_sd[j]) ** 2) / (
                prior_sd[j] * math.sqrt(2 * math.pi)
            )
            ax.plot(span, density, color="#777777", linewidth=0.8, label="prior")
            for edge in (lo, hi):
                ax.axvline(edge, color="#08519c", linestyle="--", linewidth=0.8)
            ax.axvline(prior_mean[j], color="#777777", linewidth=0.8)
            ax.set_xlim(x.min() - 0.5 * (x.max() - x.min()), x.max() + 0.5 * (x.max() - x.min()))
            ax.set_title(f"{name} [{units[j]}]", fontsize=9)
            ax.tick_params(labelsize=7)
            ax.ticklabel_format(axis="x", useOffset=False, style="sci", scilimits=(-3, 4))
            ax.set_yticks([])
            if j == 0:
                ax.legend(fontsize=7)

    return _svg(draw, (9.0, 2.6 * rows))


def _calibration_page(job: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    e = html.escape
    doc = job.get("result") or {}
    post = doc.get("posterior") or {}
    draws = np.asarray(arrays.get("posterior_draws", np.empty((0, 0))))
    parts = [
        f"<p>Instrument {e(str(job.get('instrument_id')))}; prior: calibration "
        f"{e(str(doc.get('prior_version')))}; {post.get('measurements')} measurement(s) from "
        f"{len(doc.get('datasets') or [])} dataset(s); {e(str(post.get('method')))}, "
        f"{post.get('chains')} chain(s), {post.get('draws')} draws, "
        f"{_num(post.get('seconds'), 3)} s.</p>"
    ]
    if doc.get("converged"):
        parts.append(
            f"<p class='ok'>Every diagnostic passed: proposed as calibration version "
            f"<b>{e(str(doc.get('proposed_version')))}</b>, not in force until an admin "
            "accepts it.</p>"
        )
    else:
        problems = "".join(f"<li>{e(p)}</li>" for p in doc.get("problems") or [])
        parts.append(
            "<p class='bad'>No calibration proposed: a diagnostic failed.</p>"
            f"<ul class='bad'>{problems}</ul>"
        )
    constants = post.get("constants") or []
    if len(constants) and draws.ndim == 2 and draws.shape[1] == len(constants) and len(draws):
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        rows = [
            (
                c,
                post["units"][j],
                _num(post["prior_mean"][j]),
                _num(post["prior_sd"][j]),
                _num(post["mean"][j]),
                _num(post["sd"][j]),
                f"{_num(lo[j])} .. {_num(hi[j])}",
                _num(post["r_hat"][j]),
                _num(post["ess"][j], 3),
            )
            for j, c in enumerate(constants)
        ]
        parts += [
            "<h2>Constants</h2>",
            _table(
                (
                    "constant",
                    "unit",
                    "prior mean",
                    "prior sd",
                    "posterior mean",
                    "posterior sd",
                    "90 % interval",
                    "R-hat",
                    "ESS",
                ),
                rows,
            ),
            "<h2>Posterior marginals against the prior</h2>",
            "<p>Histogram: posterior draws; grey: the prior; dashed: the 90 % interval.</p>",
            _marginals(post, draws),
        ]
    ppc = post.get("posterior_predictive") or {}
    parts += [
        "<h2>Diagnostics</h2>",
        _table(
            (
                "divergent transitions",
                "outside 90 % predictive interval",
                "chi-square / dof",
                "p-value",
                "largest residual [sd]",
            ),
            [
                (
                    post.get("divergences"),
                    _num(ppc.get("outside_90"), 3),
                    f"{_num(ppc.get('chi2'), 4)} / {_num(ppc.get('dof'), 4)}",
                    _num(ppc.get("p_value"), 3),
                    _num(ppc.get("max_abs_residual"), 3),
                )
            ],
        ),
    ]
    measured = doc.get("measured") or []
    if measured:
        parts += [
            "<h2>Measurements used</h2>",
            _table(
                ("quantity", "value", "sd", "dataset"),
                [
                    (
                        m["quantity"],
                        _num(m["value"], 6),
                        _num(m["sd"], 3),
                        m.get("dataset_id") or "-",
                    )
                    for m in measured
                ],
            ),
        ]
    excluded = doc.get("excluded") or []
    if excluded:
        parts += [
            "<h2>Measurements left out</h2>",
            _table(
                ("dataset", "quantity", "why"),
                [(x.get("dataset_id"), x.get("quantity"), x.get("reason")) for x in excluded],
            ),
        ]
    return _page(f"Calibration {job['id']}", parts)


# ---------------------------------------------------------------------------- forecast
def _band(doc: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    history_t = np.asarray(arrays.get("history_t_s", []), dtype=float)
    history = np.asarray(arrays.get("history_values", []), dtype=float)
    rows = doc.get("horizons") or []
    horizons = np.array([float(h["horizon_s"]) for h in rows])
    last_t = float(history_t[-1]) if len(history_t) else 0.0

    def q(level: float) -> np.ndarray:
        return np.array([float(h["quantiles"][f"{level:g}"]) for h in rows])

    def draw(fig: Any) -> None:
        ax = fig.add_subplot()
        ax.plot((history_t - last_t) / 60, history, color="#08519c", linewidth=0.8, label="data")
        if len(horizons):
            t = np.concatenate([[0.0], horizons]) / 60
            last = history[-1] if len(history) else np.nan

            def edge(level: float) -> np.ndarray:
                return np.concatenate([[last], q(level)])

            ax.fill_between(t, edge(0.05), edge(0.95), color="#c6dbef", label="5-95 %")
            ax.fill_between(t, edge(0.25), edge(0.75), color="#6baed6", label="25-75 %")
            ax.plot(t, edge(0.5), color="#08306b", linewidth=1.0, label="median")
            tolerance = doc.get("tolerance")
            if tolerance is not None and len(history):
                for sign in (-1, 1):
                    ax.axhline(
                        last + sign * tolerance,
                        color="#e67e22",
                        linestyle="--",
                        linewidth=0.8,
                        label="tolerance" if sign > 0 else None,
                    )
        ax.axvline(0.0, color="#555555", linewidth=0.6)
        ax.set_xlabel("minutes from the forecast origin")
        ax.set_ylabel(f"{doc.get('quantity')} [{doc.get('unit')}]")
        ax.ticklabel_format(axis="y", useOffset=False, style="sci", scilimits=(-3, 4))
        ax.legend(fontsize=7, loc="upper left")

    return _svg(draw, (9.0, 3.4))


def _forecast_page(job: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    e = html.escape
    doc = job.get("result") or {}
    window = doc.get("window") or {}
    parts = [
        f"<p>Instrument {e(str(job.get('instrument_id')))}; {e(str(doc.get('quantity')))} "
        f"({e(str(doc.get('source')))}) from {e(str(window.get('start')))} to "
        f"{e(str(window.get('end')))}, {window.get('points')} points; origin "
        f"{e(str(doc.get('origin')))}.</p>"
    ]
    if doc.get("tolerance") is not None:
        stable = doc.get("stable_after_s")
        parts.append(
            f"<p>Probability that {e(str(doc.get('quantity')))} stays within "
            f"±{_num(doc.get('tolerance'))} {e(str(doc.get('unit')))} for "
            f"{_num(float(doc.get('duration_s') or 0) / 60, 3)} min from the origin: "
            f"<b>{_num(doc.get('probability_within'), 3)}</b>; stable (probability >= 0.9) "
            + ("not within an hour" if stable is None else f"from {_num(stable / 60, 3)} min on")
            + ".</p>"
        )
    parts += ["<h2>Forecast band</h2>", _band(doc, arrays), "<h2>Predictive quantiles</h2>"]
    levels = ("0.05", "0.25", "0.5", "0.75", "0.95")
    parts.append(
        _table(
            ("horizon [min]", "at", "mean", "sd", *(f"q{lv}" for lv in levels)),
            [
                (
                    _num(h["horizon_s"] / 60, 4),
                    h["at"],
                    _num(h["mean"], 6),
                    _num(h["sd"], 3),
                    *(_num(h["quantiles"].get(lv), 6) for lv in levels),
                )
                for h in doc.get("horizons") or []
            ],
        )
    )
    diagnostics = doc.get("diagnostics") or {}
    parts += [
        "<h2>Fit</h2>",
        _table(("item", "value"), [(k, str(v)) for k, v in sorted(diagnostics.items())]),
    ]
    return _page(f"Forecast {job['id']}", parts)


def render_job_report(job: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> str:
    """The report of a succeeded calibration or forecast job (its JSON view and arrays); a
    forecast's at the default horizons, answered from its stored fit."""
    if job["kind"] == "calibration":
        return _calibration_page(job, arrays)
    document = job.get("result") or {}
    if "model" in document:  # the fit, not an answer: ask it the default question
        model = forecast_model(document, arrays)
        document = forecast_document(
            document, model, horizons_s=DEFAULT_HORIZONS_S, tolerance=None, duration_s=1200.0
        )
    return _forecast_page({**job, "result": document}, arrays)
