"""Render a run folder as one self-contained index.html (plots inlined) and a summary.md."""

from __future__ import annotations

import base64
import html
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from loadgen.engine_metrics import series_value
from loadgen.telemetry import read_telemetry
from scenarios.metrics import Summary, summarize_table
from scenarios.records import iter_records
from scenarios.spec import Scenario
from scenarios.table import RequestTable
from simulator.backtest import BacktestRow
from simulator.calibrate import Calibration
from simulator.forecast import ForecastPoint, points_from_dicts
from surgecast.rundir import RunFolder, RunFolderError
from surgecast.tables import (
    backtest_table,
    calibration_table,
    forecast_table,
    summary_tables,
)

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:.6em;
overflow-x:auto}.bad{color:#b00020;font-weight:bold}.good{color:#1b7f3b;font-weight:bold}
img{max-width:100%}"""


T = TypeVar("T")


def _png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


PLOTTED = 5000  # points a line or scatter draws at most: a day's run plots as fast as a minute's


def _cdf(ax: Any, seconds: np.ndarray, label: str, style: str = "-") -> None:
    if len(seconds):
        x = np.sort(seconds * 1000.0)
        y = np.arange(1, len(x) + 1) / len(x)
        if len(x) > PLOTTED:  # the CDF at PLOTTED evenly spaced ranks (the last one kept)
            at = np.linspace(0, len(x) - 1, PLOTTED).astype(int)
            x, y = x[at], y[at]
        ax.plot(x, y, style, label=label)


def _thinned(rows: np.ndarray) -> np.ndarray:
    """At most PLOTTED of the row numbers, evenly spaced."""
    if len(rows) <= PLOTTED:
        return rows
    return rows[np.linspace(0, len(rows) - 1, PLOTTED).astype(int)]


def latency_plot(measured: RequestTable, simulated: RequestTable | None) -> str:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, ("ttft", "itl", "e2e"), strict=True):
        _cdf(ax, measured.samples(metric), "measured")
        if simulated is not None and len(simulated):
            _cdf(ax, simulated.samples(metric), "simulated (back-test)", "--")
        ax.set_xlabel(f"{metric.upper()} (ms)")
        ax.set_ylabel("fraction of requests" if metric != "itl" else "fraction of gaps")
        ax.grid(alpha=0.3)
        _legend(ax)
    fig.suptitle("Latency distributions (CDF)")
    return _png(fig)


def timeline_plot(table: RequestTable) -> str:
    fig, ax = plt.subplots(figsize=(13, 3.6))
    ok = _thinned(np.flatnonzero(table.ok & ~np.isnan(table.first_token)))
    bad = _thinned(np.flatnonzero(~table.ok))
    ttft_ms = (table.first_token[ok] - table.start[ok]) * 1000
    ax.scatter(table.start[ok], ttft_ms, s=8, label="TTFT")
    if len(bad):
        ax.scatter(
            table.start[bad], np.zeros(len(bad)), marker="x", color="red", label="failed request"
        )
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("TTFT (ms)")
    ax.grid(alpha=0.3)
    _legend(ax)
    ax.set_title("TTFT over time")
    return _png(fig)


# Server gauges worth plotting over time (engine_metrics.SERIES holds each engine's names).
GAUGES = {
    "running": "running",
    "waiting": "waiting",
    "KV cache used (fraction)": "kv_cache_usage",
}


def telemetry_plot(samples: Sequence[dict[str, Any]]) -> str:
    """Server queue and KV gauges (Prometheus) and GPU utilisation (NVML) over the run."""
    prom = [s for s in samples if s.get("source") == "prometheus" and "metrics" in s]
    gpu = [s for s in samples if s.get("source") == "nvml"]
    panels: list[tuple[str, list[float], list[float]]] = []
    for label, what in GAUGES.items():
        found = [(s["t"], v) for s in prom if (v := series_value(s["metrics"], what))]
        if found:
            name = found[0][1][0]
            points = [(t, value) for t, (n, value) in found if n == name]
            panels.append((f"{label}\n{name}", [t for t, _ in points], [v for _, v in points]))
    if gpu:
        t = [s["t"] for s in gpu]
        util = [float(np.mean([g["gpu_util_pct"] for g in s["gpus"]] or [0])) for s in gpu]
        panels.append(("GPU utilisation % (mean of GPUs)", t, util))
    if not panels:
        return ""
    fig, axes = plt.subplots(1, len(panels), figsize=(13, 3.2), squeeze=False)
    for ax, (label, times, values) in zip(axes[0], panels, strict=True):
        ax.step(times, values, where="post")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("time since start (s)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def forecast_plot(points: Sequence[ForecastPoint]) -> str:
    met = [p for p in points if p.best is not None]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 3.6))
    scales = [p.scale for p in met]
    ax1.plot(scales, [p.best.replicas for p in met if p.best], "o-")
    ax1.set_ylabel("replicas needed")
    ax2.plot(scales, [p.cost_per_month_usd for p in met], "o-", color="tab:green")
    ax2.set_ylabel("cost per month (USD)")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("traffic scale (x today's rate)")
        ax.grid(alpha=0.3, which="both")
    fig.suptitle("Replicas and cost against scale")
    return _png(fig)


def _table_html(md: str) -> str:
    """Markdown tables from `surgecast.tables` as HTML; other paragraphs as text."""
    out = []
    for block in md.split("\n\n"):
        lines = block.splitlines()
        if lines and lines[0].startswith("|"):
            rows = [
                [html.escape(c.strip()) for c in ln.strip("|").split("|")]
                for ln in lines
                if not ln.startswith("|-")
            ]
            head = "".join(f"<th>{c}</th>" for c in rows[0])
            body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows[1:])
            out.append(f"<table><tr>{head}</tr>{body}</table>")
        else:
            out.append(f"<p>{html.escape(block)}</p>")
    return "\n".join(out)


def _optional(folder: RunFolder, path: Path) -> Any:
    """A derived file's JSON (calibration, back-test, forecast); None with a warning when it
    is corrupt: the report leaves its section out rather than failing."""
    try:
        return folder.read_json(path)
    except RunFolderError as e:
        print(f"warning: {e}; its section is left out", file=sys.stderr)
        return None


def _or_warn(path: Path, build: Callable[[], T]) -> T | None:
    """`build()`, or None with a warning naming `path` when its content does not fit."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        print(f"warning: {path}: not usable ({type(e).__name__}: {e}); left out", file=sys.stderr)
        return None


def render(folder: RunFolder) -> tuple[str, str]:
    """Write index.html and summary.md for the run folder; returns their paths."""
    folder.mark_if_killed()
    meta = folder.meta()
    scenario = Scenario.model_validate(meta["scenario"])
    run_table = folder.table()
    summary: Summary = summarize_table(
        run_table, scenario.thresholds(), meta.get("duration_s"), scenario.persona_thresholds()
    )
    simulated = (
        RequestTable.of(iter_records(folder.simulated)) if folder.simulated.exists() else None
    )
    cal_data = _optional(folder, folder.calibration)
    bt_data = _optional(folder, folder.backtest)
    fc_data = _optional(folder, folder.forecast)

    validity = meta.get("validity", {})
    valid = validity.get("valid", True)
    status = "valid" if valid else "INVALID: " + "; ".join(validity.get("reasons", []))
    if meta.get("status") == "running":  # its writer is alive, or on another host
        status = "STILL RUNNING (or killed on another host): these are the records so far"
        valid = False
    slo_line = ("All SLOs met." if summary.slos_passed else "SLOs missed.") if summary.slos else ""
    measured = meta.get("source", "measured") == "measured"
    sections: list[tuple[str, str, str]] = [  # (title, markdown, extra html)
        (
            "Measured run" if measured else "Simulated run",
            "\n\n".join(
                [summary_tables(summary)] + [f"WARNING: {w}" for w in meta.get("warnings", [])]
            ),
            latency_plot(run_table, simulated)
            + timeline_plot(run_table)
            + (
                _or_warn(folder.telemetry, lambda: telemetry_plot(read_telemetry(folder.telemetry)))
                or ""
            ),
        ),
    ]
    if cal_data:
        table = _or_warn(
            folder.calibration, lambda: calibration_table(Calibration.from_dict(cal_data))
        )
        if table:
            sections.append(("Calibration", table, ""))
    rows = bt_data and _or_warn(
        folder.backtest, lambda: [BacktestRow.from_dict(r) for r in bt_data["rows"]]
    )
    if rows:
        sections.append(
            (
                "Back-test: the calibrated model predicts the measured run"
                + (
                    " (in-sample: the calibration was fitted on this run)"
                    if bt_data.get("in_sample")
                    else ""
                ),
                "\n\n".join(
                    [backtest_table(rows)] + [f"WARNING: {w}" for w in bt_data.get("warnings", [])]
                ),
                "",
            )
        )
    points = fc_data and _or_warn(folder.forecast, lambda: points_from_dicts(fc_data["points"]))
    if points:
        sections.append(("Capacity forecast", forecast_table(points), forecast_plot(points)))

    target = meta.get("target", {})
    where = " ".join(str(x) for x in (target.get("kind", "?"), target.get("base_url")) if x)
    header = (
        f"Scenario {scenario.name}, target {where}, seed {meta.get('seed')}, "
        f"started {meta.get('started_at', '?')}; run {status}. {slo_line}"
    )
    md = [f"# surgecast run {meta.get('run_id', folder.path.name)}", "", header, ""]
    for title, body, _ in sections:
        md += [f"## {title}", "", body, ""]
    folder.markdown.write_text("\n".join(md), encoding="utf-8")

    cls = "good" if valid and (summary.slos_passed or not summary.slos) else "bad"
    page = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>surgecast "
        f"{html.escape(str(meta.get('run_id')))}</title><style>{CSS}</style></head><body>",
        f"<h1>surgecast run {html.escape(str(meta.get('run_id')))}</h1>",
        f"<p class='{cls}'>{html.escape(header)}</p>",
    ]
    for title, body, extra in sections:
        page += [f"<h2>{html.escape(title)}</h2>", _table_html(body), extra]
    page.append(
        "<p><small>Files: run.json, requests.jsonl (one record per request), telemetry.jsonl, "
        "calibration.json, backtest.json, simulated.jsonl, forecast.json.</small></p>"
    )
    page.append("</body></html>")
    folder.html.write_text("\n".join(page), encoding="utf-8")
    return str(folder.html.resolve()), str(folder.markdown.resolve())
