"""Render a run folder as one self-contained index.html (plots inlined) and a summary.md."""

from __future__ import annotations

import base64
import io
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jinja2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from loadgen.telemetry import read_telemetry
from scenarios.metrics import Summary, summarize_table
from scenarios.records import RecordsError, iter_records
from scenarios.runfiles import UnreadableFile
from scenarios.spec import Scenario
from scenarios.table import RequestTable
from simulator.forecast.search import ForecastPoint
from simulator.forecast.spend import BudgetVerdict, judge_budgets
from surgecast.compare import (
    HEADERS,
    Comparison,
    Run,
    change_rows,
    compare,
    distribution_figure,
    goodput_limits,
)
from surgecast.contracts import (
    ContractError,
    RunMeta,
    read_backtest,
    read_calibration,
    read_forecast,
    write_summary,
)
from surgecast.files import write_whole
from surgecast.rundir import RunFolder
from surgecast.tables import (
    Block,
    Table,
    as_markdown,
    backtest_data,
    budget_blocks,
    calibration_blocks,
    error_table,
    forecast_blocks,
    md_text,
    summary_blocks,
)
from targets.engine_metrics import series_value

CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;
padding:3px 8px;text-align:right}th{background:#f3f3f3}pre{background:#f7f7f7;padding:.6em;
overflow-x:auto}.bad{color:#b00020;font-weight:bold}.good{color:#1b7f3b;font-weight:bold}
img{max-width:100%}"""


T = TypeVar("T")


@dataclass(frozen=True)
class Figure:
    alt: str  # what it shows, in words (its caption too)
    png: str  # base64


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass(frozen=True)
class VerdictLine:
    head: str
    tone: str  # good, bad, warning or none
    text: str = ""
    items: tuple[str, ...] = ()

    def markdown(self) -> str:
        """A list item, its items nested; a target's words in them shown, never rendered."""
        head = f"**{self.head}**" + (f" {md_text(self.text)}" if self.text else "")
        return "\n".join([f"- {head}", *(f"  - {md_text(item)}" for item in self.items)])


def as_figure(fig: plt.Figure, alt: str) -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return Figure(alt, base64.b64encode(buf.getvalue()).decode())


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


STOPPING_S = 5.0  # a killed master's worker, past its grace, has stopped within this
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


def latency_plot(measured: RequestTable, simulated: RequestTable | None) -> Figure:
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
    return as_figure(fig, "Latency distributions: TTFT, ITL and E2E, cumulative")


# Server gauges worth plotting over time (engine_metrics.SERIES holds each engine's names).
GAUGES = {
    "running": "running",
    "waiting": "waiting",
    "KV cache used (fraction)": "kv_cache_usage",
}
Panel = tuple[str, np.ndarray, np.ndarray]  # label, times (s), values


def telemetry_panels(samples: Sequence[dict[str, Any]]) -> list[Panel]:
    """Server queue and KV gauges (Prometheus) and GPU utilisation (NVML) over the run."""
    prom = [s for s in samples if s.get("source") == "prometheus" and "metrics" in s]
    gpu = [s for s in samples if s.get("source") == "nvml"]
    panels: list[Panel] = []
    for label, what in GAUGES.items():
        found = [(s["t"], v) for s in prom if (v := series_value(s["metrics"], what))]
        if found:
            name = found[0][1][0]
            points = np.array([(t, value) for t, (n, value) in found if n == name], float)
            panels.append((f"server: {label}\n{name}", points[:, 0], points[:, 1]))
    if gpu:
        t = np.array([s["t"] for s in gpu], float)
        util = [float(np.mean([g["gpu_util_pct"] for g in s["gpus"]] or [0])) for s in gpu]
        panels.append(("GPU utilisation %\n(mean of GPUs)", t, np.array(util)))
    return panels


def over_time_plot(table: RequestTable, telemetry: Sequence[Panel]) -> Figure:
    """One time axis for everything: the arrival rate, TTFT and ITL per request (failed
    requests marked), then each server and GPU gauge."""
    fig, axes = plt.subplots(
        3 + len(telemetry), 1, figsize=(13, 2.1 * (3 + len(telemetry))), sharex=True
    )
    rate, ttft, itl = axes[0], axes[1], axes[2]
    if len(table):
        edges = np.arange(np.floor(table.start.min()), np.ceil(table.start.max()) + 2.0)
        sent, _ = np.histogram(table.start, edges)
        done, _ = np.histogram(table.end[table.ok], edges)
        rate.step(edges[:-1], sent, where="post", label="sent")
        rate.step(edges[:-1], done, where="post", label="answered", alpha=0.7)
    rate.set_ylabel("requests/s")
    answered = np.flatnonzero(table.answered)
    ok = _thinned(answered)
    ttft.scatter(table.start[ok], (table.first_token[ok] - table.start[ok]) * 1000, s=6)
    bad = _thinned(np.flatnonzero(~table.ok))
    if len(bad):
        ttft.scatter(table.start[bad], np.zeros(len(bad)), marker="x", color="red", label="failed")
    ttft.set_ylabel("TTFT ms")
    streamed = ok[table.output_tokens[ok] > 1]
    mean_gap = (table.end[streamed] - table.first_token[streamed]) / (
        table.output_tokens[streamed] - 1
    )
    itl.scatter(table.start[streamed], mean_gap * 1000, s=6, label="mean gap (TPOT)")
    longest = streamed[~np.isnan(table.max_gap[streamed])]
    itl.scatter(table.start[longest], table.max_gap[longest] * 1000, s=6, label="longest gap")
    itl.set_ylabel("ITL ms")
    for ax, (label, times, values) in zip(axes[3:], telemetry, strict=True):
        ax.step(times, values, where="post")
        ax.set_ylabel(label, fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
        _legend(ax)
    axes[-1].set_xlabel("time since the run started (s)")
    fig.suptitle("Over time: arrivals, latency, server and GPU")
    fig.tight_layout()
    what = "arrival rate, TTFT and ITL per request" + (
        ", server and GPU gauges" if telemetry else ""
    )
    return as_figure(fig, f"Over time, one axis: {what}")


def forecast_plot(points: Sequence[ForecastPoint]) -> Figure:
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
    return as_figure(fig, "Forecast: replicas and cost per month against the traffic scale")


def _document(path: Path, read: Callable[[Path], T]) -> T | None:
    """A derived document (calibration, back-test, forecast), None when there is none; with a
    warning, None when it does not meet its contract: the report leaves its section out
    rather than failing."""
    if not path.exists():
        return None
    try:
        return read(path)
    except ContractError as e:
        print(f"warning: {e}; its section is left out", file=sys.stderr)
        return None


def _or_warn(path: Path, build: Callable[[], T]) -> T | None:
    """`build()`, or None with a warning naming `path` when its content does not fit."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        print(f"warning: {path}: not usable ({type(e).__name__}: {e}); left out", file=sys.stderr)
        return None


def verdict_lines(
    meta: RunMeta,
    summary: Summary,
    comparison: Comparison | None,
    budgets: Sequence[BudgetVerdict] = (),
) -> list[VerdictLine]:
    """What a reader needs first: a cost alert when the forecast misses a cost budget, then can
    the run be trusted, were the SLOs met, did it regress, did the forecast keep its budgets."""
    missed = [v for v in budgets if not v.passed]
    lines = [_cost_alert(missed)] if missed else []
    lines += [_validity_line(meta), _slo_line(summary)]
    if comparison is not None:
        lines.append(_regression_line(comparison))
    if budgets and not missed:
        lines.append(VerdictLine("Cost budgets met:", "good", _budgets_met(budgets)))
    lines += [VerdictLine("Warning:", "warning", w) for w in meta.warnings]
    return lines


def _cost_alert(missed: Sequence[BudgetVerdict]) -> VerdictLine:
    """Each cost budget the forecast misses: the budget, the figure, the limit, the scale."""
    return VerdictLine(
        "Cost alert:",
        "bad",
        "the forecast misses the scenario's cost budgets",
        tuple(v.message for v in missed),
    )


def _budgets_met(budgets: Sequence[BudgetVerdict]) -> str:
    judged = [v for v in budgets if math.isfinite(v.figure)]
    scales = sorted({v.scale for v in judged if v.scale is not None})
    top = f" up to x{scales[-1]:g}" if scales else ""
    return f"{len(judged)} of {len(budgets)} judged and held at every forecast scale{top}."


def _validity_line(meta: RunMeta) -> VerdictLine:
    """Whether the run can be trusted: still running, simulated, valid, or why not."""
    validity = meta.validity
    if meta.status == "running":  # its writer is alive, or on another host
        return VerdictLine(
            "Still running", "bad", "(or killed on another host): the records so far"
        )
    if meta.source == "simulated":
        return VerdictLine("Simulated run.", "none", "No load was sent.")
    if validity is None or validity.valid:
        return VerdictLine(
            "Valid run.", "good", "The generator kept its plan; the target answered."
        )
    return VerdictLine(
        "INVALID run:", "bad", "its numbers cannot be trusted, because", tuple(validity.reasons)
    )


def _slo_line(summary: Summary) -> VerdictLine:
    """Whether the SLOs held, the scenario's and each persona's own; the ones missed."""
    missed = [r for r in summary.slos if not r.passed] + [
        r for p in summary.by_persona.values() for r in p.slos if not r.passed
    ]
    if not summary.slos and not summary.by_persona:
        return VerdictLine("No SLOs set.", "none", "(the scenario's `slos`)")
    if missed:
        items = tuple(f"{r.threshold}: observed {r.observed:,.4g}" for r in missed)
        return VerdictLine("SLOs missed:", "bad", "", items)
    held = len(summary.slos) + sum(len(p.slos) for p in summary.by_persona.values())
    return VerdictLine("SLOs met.", "good", f"All {held} objectives hold.")


def _regression_line(comparison: Comparison) -> VerdictLine:
    """Whether the run regressed against the baseline: each significant change for the worse."""
    label = ", ".join(r.label for r in comparison.baseline)
    worse = [c for c in comparison.changes if c.significant and c.worse * c.delta > 0]
    if not worse:
        return VerdictLine(
            f"No regression against {label}:",
            "good",
            f"no change for the worse is significant at {comparison.confidence:.0%}",
        )
    items = tuple(
        f"{c.name}: {c.baseline:,.4g} -> {c.candidate:,.4g} {c.unit}"
        + (f" ({c.relative:+.1%})" if math.isfinite(c.relative) else "")
        for c in worse
    )
    return VerdictLine(
        f"Regression against {label}:",
        "bad",
        f"significant at {comparison.confidence:.0%}",
        items,
    )


def render(folder: RunFolder, baseline: RunFolder | None = None) -> tuple[str, str]:
    """Write index.html and summary.md for the run folder (compared with `baseline` when
    given); returns their paths."""
    folder.mark_if_killed()
    meta = folder.meta()
    scenario = Scenario.model_validate(meta.scenario)
    if meta.status != "running":  # a killed run's local workers' records, into requests.jsonl
        try:  # a worker may still be stopping (its requests in flight get their grace)
            stopping_s = scenario.traffic.stop_grace_s + STOPPING_S
            merged = folder.merge_records(stopping_s, say=lambda s: print(s, file=sys.stderr))
        except (OSError, UnreadableFile, RecordsError) as e:  # read as they are, unmerged
            print(f"warning: {folder.path}: worker records not merged: {e}", file=sys.stderr)
        else:
            lost = merged.lost_words()
            if lost and sum(merged.lost.values()):  # workers killed with it, requests out
                reasons = meta.validity.reasons if meta.validity else []
                meta = folder.update_meta(validity={"valid": False, "reasons": [*reasons, lost]})
    run_table = folder.table()
    summary: Summary = summarize_table(
        run_table, scenario.thresholds(), meta.duration_s, scenario.persona_thresholds()
    )
    write_summary(folder.summary, summary)
    comparison = None
    if baseline is not None:
        comparison = compare(
            [Run.of(baseline.meta().run_id, baseline.table())],
            [Run.of(meta.run_id, run_table)],
            limits=goodput_limits(scenario.thresholds()),
        )
    points = _document(folder.forecast, read_forecast)
    budgets = judge_budgets(scenario.cost.budgets.thresholds(), points) if points else []
    sections = _sections(folder, meta, run_table, summary, comparison, points or [], budgets)
    where = " ".join(x for x in (meta.target.kind, meta.target.base_url) if x)
    header = (
        f"Scenario {scenario.name}, target {where}, seed {meta.seed}, started {meta.started_at}."
    )
    verdict = verdict_lines(meta, summary, comparison, budgets)
    md = [f"# surgecast run {meta.run_id}", "", "## Verdict", ""]
    md += [line.markdown() for line in verdict] + ["", md_text(header), ""]
    for section in sections:
        if section.blocks:
            md += [f"## {section.title}", "", as_markdown(section.blocks), ""]
    write_whole(folder.markdown, "\n".join(md))
    page = TEMPLATES.get_template("report.html.j2").render(
        title=f"surgecast run {meta.run_id}",
        verdict=verdict,
        good=all(line.tone != "bad" for line in verdict),
        header=header,
        sections=sections,
    )
    write_whole(folder.html, page)
    return str(folder.html.resolve()), str(folder.markdown.resolve())


def _sections(
    folder: RunFolder,
    meta: RunMeta,
    run_table: RequestTable,
    summary: Summary,
    comparison: Comparison | None,
    points: Sequence[ForecastPoint] = (),
    budgets: Sequence[BudgetVerdict] = (),
) -> list[Section]:
    """The report's sections after the verdict, in order: plots, tables, the comparison, and
    the calibration, back-test and forecast where the folder has them."""
    simulated = (
        RequestTable.of(iter_records(folder.simulated)) if folder.simulated.exists() else None
    )
    telemetry = (
        _or_warn(folder.telemetry, lambda: telemetry_panels(read_telemetry(folder.telemetry))) or []
    )
    sections = [
        Section("Latency", figures=[latency_plot(run_table, simulated)]),
        Section("Over time", figures=[over_time_plot(run_table, telemetry)]),
        Section(
            "Measured run" if meta.source == "measured" else "Simulated run",
            blocks=summary_blocks(summary, errors=False),
        ),
    ]
    if summary.error_kinds:
        sections.append(Section("Errors by kind", blocks=[error_table(summary)]))
    if comparison is not None:
        sections.append(_comparison_section(comparison))
    return sections + _derived_sections(folder, points, budgets)


def _comparison_section(comparison: Comparison) -> Section:
    """The run against its baseline: each metric's change with its interval, both CDFs."""
    return Section(
        "Against the baseline",
        blocks=[
            Table(HEADERS, change_rows(comparison)),
            f"{comparison.confidence:.0%} bootstrap intervals over requests, "
            f"{comparison.resamples} resamples",
        ],
        figures=[as_figure(distribution_figure(comparison), "Baseline and candidate latency CDFs")],
    )


def _derived_sections(
    folder: RunFolder, points: Sequence[ForecastPoint], budgets: Sequence[BudgetVerdict]
) -> list[Section]:
    """Calibration, back-test and forecast (`points`, read from forecast.json, with the cost
    budgets judged on it), from their files where present and usable."""
    sections = []
    calibration = _document(folder.calibration, read_calibration)
    if calibration is not None:
        sections.append(Section("Calibration", blocks=calibration_blocks(calibration)))
    backtest = _document(folder.backtest, read_backtest)
    if backtest is not None and backtest.rows:
        in_sample = " (in-sample: the calibration was fitted on this run)"
        sections.append(
            Section(
                "Back-test: the calibrated model predicts the measured run"
                + (in_sample if backtest.in_sample else ""),
                blocks=[backtest_data([r.row() for r in backtest.rows])]
                + [f"WARNING: {w}" for w in backtest.warnings],
            )
        )
    if points:
        sections.append(
            Section(
                "Capacity forecast",
                blocks=forecast_blocks(points) + budget_blocks(budgets, points),
                figures=[forecast_plot(points)],
            )
        )
    return sections


TEMPLATES = jinja2.Environment(
    loader=jinja2.PackageLoader("surgecast", "templates"),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
