"""Tables as data, from summaries, back-tests and forecasts: printed as Markdown on the console
and in summary.md, rendered as HTML tables in the report (never Markdown parsed back)."""

from __future__ import annotations

import dataclasses
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from scenarios.metrics import Summary
from simulator.engine.stepcost import DecodeTableCost
from simulator.fit.backtest import BacktestRow
from simulator.fit.calibrate import PARAMS, Calibration
from simulator.forecast.deployments import Choice
from simulator.forecast.search import ForecastPoint
from simulator.forecast.seeds import Estimate
from simulator.forecast.spend import BudgetVerdict, Spend, usd


@dataclass(frozen=True)
class Table:
    headers: Sequence[str]
    rows: Sequence[Sequence[object]]

    def cells(self) -> list[list[str]]:
        """Each value as the tables print it."""
        return [[_fmt(c) for c in row] for row in self.rows]

    def markdown(self) -> str:
        return markdown(self.headers, self.rows)


Block = Table | str  # a table, or a paragraph of text


def as_markdown(blocks: Sequence[Block]) -> str:
    """Blocks as Markdown, a blank line between them (empty ones left out)."""
    return "\n\n".join(b.markdown() if isinstance(b, Table) else b for b in blocks if b)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[md_text(_fmt(c)) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = [
        "| " + " | ".join(_align(v, c, w) for v, c, w in zip(row, r, widths, strict=True)) + " |"
        for row, r in zip(rows, cells, strict=True)
    ]
    return "\n".join([line, rule, *body])


_TAG_OPEN = re.compile(r"<(?=[A-Za-z/!?])")  # where CommonMark would start raw HTML


def md_text(text: str) -> str:
    """`text` as one line of Markdown that shows it as written: line breaks made spaces, and
    a `<` that would open raw HTML (a tag, a comment) escaped, so no markup a target wrote
    reaches a Markdown renderer."""
    return _TAG_OPEN.sub(r"\\<", " ".join(text.splitlines()))


def _align(value: object, cell: str, width: int) -> str:
    """Words to the left, numbers to the right, as a reader scans them."""
    return cell.ljust(width) if isinstance(value, str) else cell.rjust(width)


def _fmt(v: object) -> str:
    if isinstance(v, str):
        return v.replace("|", "/").replace("\n", " ")
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def summary_tables(s: Summary) -> str:
    return as_markdown(summary_blocks(s))


def summary_blocks(s: Summary, errors: bool = True) -> list[Block]:
    """Counts and rates, latency percentiles, errors by kind (unless not `errors`), SLOs,
    personas, token counts."""
    sent, done = f"{s.duration_s:.3g} s", f"{s.span_s:.3g} s"  # each rate's span
    head = Table(
        [
            "requests",
            "ok",
            "errors",
            f"req/s sent (over the {sent} send window)",
            f"throughput req/s (first send to last answer, {done})",
            f"output tok/s ({done})",
            f"goodput req/s ({done})",
            "send lateness p99 ms",
        ],
        [
            [
                s.requests,
                s.ok,
                s.requests - s.ok,
                s.request_rate,
                s.throughput,
                s.output_tokens_per_s,
                s.goodput,
                s.lateness_p99_ms,
            ]
        ],
    )
    names = ("ttft", "ttft_intended", "itl", "tpot", "e2e", "e2e_intended")
    rows = [
        [n, st.count, st.mean, *st.percentiles.values(), st.max]
        for n in names
        if (st := s.metrics[n]).count
    ]
    parts: list[Block] = [head]
    if rows:
        parts.append(
            Table(["metric (ms)", "count", "mean", "p50", "p90", "p95", "p99", "max"], rows)
        )
    if s.error_kinds and errors:
        parts.append(error_table(s))
    if s.slos:
        parts.append(
            Table(
                ["SLO", "observed", "result"],
                [[str(r.threshold), r.observed, "pass" if r.passed else "FAIL"] for r in s.slos],
            )
        )
    if s.by_persona:
        parts.append(persona_table(s))
    if s.tokens is not None or s.retries:
        parts.append(token_lines(s))
    if s.dropped:
        parts.append(
            f"dropped: {s.dropped} planned requests were never sent (the generator's in-flight "
            "cap, traffic.max_in_flight, was reached); they are not counted as requests"
        )
    return parts


def error_table(s: Summary) -> Table:
    """Errors by kind, with the first detail the server gave for each."""
    return Table(
        ["error kind", "count", "example"],
        [[k, n, s.error_examples.get(k, "")[:120]] for k, n in sorted(s.error_kinds.items())],
    )


def persona_table(s: Summary) -> Table:
    """Every persona's requests, latency and own SLO verdict, one row each."""
    rows = []
    for name, p in s.by_persona.items():
        failed = [str(r.threshold) for r in p.slos if not r.passed]
        rows.append(
            [
                name,
                p.requests,
                p.requests - p.ok,
                p.retries,
                p.metrics["ttft"].percentiles[50],
                p.metrics["ttft"].percentiles[95],
                p.metrics["e2e"].percentiles[95],
                p.goodput,
                "pass" if not failed else "FAIL: " + "; ".join(failed),
            ]
        )
    return Table(
        [
            "persona",
            "requests",
            "errors",
            "retries",
            "ttft p50 ms",
            "ttft p95 ms",
            "e2e p95 ms",
            "goodput req/s",
            "SLOs",
        ],
        rows,
    )


def token_lines(s: Summary) -> str:
    """Retries, the planned-versus-served prompt tokens and the server-versus-stream output
    tokens, in words."""
    lines = []
    if s.retries:
        lines.append(f"retries: {s.retries} attempts failed and were sent again")
    t = s.tokens
    if t is not None and t.requests:
        lines.append(
            f"prompt tokens: {t.served:,} served for {t.planned:,} planned over {t.requests} "
            f"requests; per request |served - planned| is {t.median_error_pct:.1f}% at the "
            f"median, {t.p90_error_pct:.1f}% at p90"
            + (" (over 5%: sizes are off)" if t.median_error_pct > 5 else "")
        )
    gap = t.output_gap_pct if t is not None else None
    if t is not None and gap is not None:
        lines.append(
            f"output tokens: {t.output_usage:,} by the server's usage, {t.output_streamed:,} "
            f"content chunks counted in the stream over {t.output_requests} requests ({gap:+.1f}%"
            f"; {t.output_disagreeing} requests apart by more than 5%)"
        )
    if t is not None and t.cache_hit_rate is not None:
        lines.append(
            f"prefix cache hit share: {t.cache_hit_rate:.1%} of the prompt tokens of "
            f"{t.cache_reports} requests came from the prefix cache ({t.cached:,} of "
            f"{t.cache_prompt:,})"
        )
    return "\n".join(lines)


def calibration_table(c: Calibration) -> str:
    return as_markdown(calibration_blocks(c))


def calibration_blocks(c: Calibration) -> list[Block]:
    """The fitted parameters, the fit's quality, the step-cost models, limits and notes."""
    fit = c.fit
    rows = [
        [name.removesuffix("_s"), value * 1000.0, stderr * 1000.0]
        for name, value, stderr in zip(PARAMS, fit.values, fit.stderr(), strict=True)
    ]
    quality = (
        f"fit: {fit.step_rows} engine steps; overhead from {fit.overhead_rows} requests, "
        f"R^2 {fit.r2:.3f}, residual RMS {fit.rmse_s * 1000:.2f} ms"
    )
    limits = (
        f"limits: max_num_seqs {c.engine.max_num_seqs}, KV cache {c.engine.kv_cache_tokens} tokens"
    )
    return [
        Table(["parameter", "value (ms)", "std error (ms)"], rows),
        quality,
        *_cost_models(c),
        limits,
        c.tokens.describe(),
        *c.notes,
    ]


def _cost_models(c: Calibration) -> list[Block]:
    """Each candidate step-cost model's held-out error, and the chosen one where it bends."""
    fit = c.fit
    if not fit.candidates:
        return []
    table = Table(
        ["step-cost model", "held-out step error (ms)", ""],
        [
            [m.name, m.held_out_s * 1000.0, "chosen" if m.name == fit.chosen else ""]
            for m in fit.candidates
        ],
    )
    cost = c.engine.cost
    if isinstance(cost, DecodeTableCost):
        steps = ", ".join(
            f"{b:g}: {s * 1000:.2f}" for b, s in zip(cost.batch, cost.step_s, strict=True)
        )
        return [
            table,
            f"{fit.chosen} (the parameters above are the linear fit's): decode step "
            f"ms by batch size {steps}; per prefill token {cost.per_prefill_token_s * 1000:.4f} "
            f"ms, per context token {cost.per_context_token_s * 1000:.6f} ms",
        ]
    if fit.chosen != "linear":
        terms = ", ".join(
            f"{f.name.removesuffix('_s')} {getattr(cost, f.name) * 1000:.4g} ms"
            for f in dataclasses.fields(cost)
        )
        return [table, f"{fit.chosen} (the parameters above are the linear fit's): {terms}"]
    return [table]


def _num(x: float) -> str:
    """Three significant figures at most, thousands separated, never in e-notation."""
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def backtest_table(rows: Sequence[BacktestRow]) -> str:
    return backtest_data(rows).markdown()


def backtest_data(rows: Sequence[BacktestRow]) -> Table:
    """Measured against predicted, with the 90% interval the measured value should fall in."""
    return Table(
        ["basis", "metric", "measured", "predicted", "90% interval", "inside", "error %"],
        [
            [
                r.basis,
                f"{r.metric} p{r.quantile} ({r.unit})" if r.quantile else f"{r.metric} ({r.unit})",
                r.measured,
                r.predicted,
                f"{_num(r.low)} - {_num(r.high)}",
                "yes" if r.inside else "NO",
                f"{r.error_pct:+.1f}",
            ]
            for r in rows
        ],
    )


def _ci(mean: float, low: float, high: float) -> str:
    return f"{mean:,.0f} ({low:,.0f}-{high:,.0f})"


def _p50_p95(p50: Estimate, p95: Estimate) -> str:
    return f"{p50.mean:,.0f} / {_ci(p95.mean, p95.low, p95.high)}"


def _with_interval(n: int, low: int | None, high: int | None) -> str:
    """`n`, with its interval where one was searched ("over the limit": not met at the edge)."""
    if low is None:
        return f"{n:,}"
    return f"{n:,} ({low:,}-{'over the limit' if high is None else f'{high:,}'})"


def _cost_with_interval(p: ForecastPoint) -> str:
    cost = f"${p.cost_per_month_usd:,.0f}"
    band = p.cost_interval_usd
    if band is None:
        return cost
    low, high = band
    return cost + f" (${low:,.0f}-{'?' if high is None else f'${high:,.0f}'})"


def fixed_fleet_table(points: Sequence[ForecastPoint]) -> Table:
    rows: list[list[object]] = []
    for p in points:
        b = p.best
        if b is None:
            rows.append([f"x{p.scale:g}", p.rate, "not met", *["-"] * 9])
            continue
        per_m = p.cost_per_million_tokens_usd
        rows.append(
            [
                f"x{p.scale:g}",
                p.rate,
                _with_interval(b.replicas, p.replicas_low, p.replicas_high),
                _p50_p95(b.ttft_p50_ms, b.ttft_p95_ms),
                _p50_p95(b.e2e_p50_ms, b.e2e_p95_ms),
                b.throughput.mean,
                f"{b.load:.0%} / {b.headroom:.0%}",
                f"{b.kv_peak.high:.0%} / {b.kv_mean.mean:.0%}",
                f"{b.preemptions.mean:,.0f}",
                b.binding,
                _cost_with_interval(p),
                "-" if per_m is None else f"${per_m:,.2f}",
            ]
        )
    return Table(
        [
            "scale",
            "rate req/s",
            "replicas (90% interval)",
            "TTFT ms p50 / p95 (seed range)",
            "E2E ms p50 / p95 (seed range)",
            "throughput req/s",
            "load / headroom",
            "KV peak / mean",
            "preemptions",
            "binding limit",
            "cost / month",
            "$ / M output tokens",
        ],
        rows,
    )


def autoscale_table(points: Sequence[ForecastPoint]) -> Table | None:
    """The scenario's autoscaler beside the fixed fleet, on the same traffic."""
    rows: list[list[object]] = []
    for p in points:
        a, b = p.autoscaled, p.best
        if a is None or b is None:
            continue
        rows.append(
            [
                f"x{p.scale:g}",
                b.replicas,
                f"${p.cost_per_month_usd:,.0f}",
                f"{a.mean_replicas.mean:,.1f} / {a.peak_replicas.high:,.0f}",
                f"${p.autoscaled_cost_per_month_usd or 0:,.0f}",
                f"{a.cold_starts.mean:,.1f}",
                _p50_p95(a.ttft_p50_ms, a.ttft_p95_ms),
                "yes" if a.passed else "NO",
            ]
        )
    if not rows:
        return None
    return Table(
        [
            "scale",
            "fixed replicas",
            "fixed cost / month",
            "autoscaled mean / peak",
            "autoscaled cost / month",
            "cold starts",
            "autoscaled TTFT ms p50 / p95",
            "autoscaled meets SLOs",
        ],
        rows,
    )


def forecast_table(points: Sequence[ForecastPoint]) -> str:
    return as_markdown(forecast_blocks(points))


def forecast_blocks(points: Sequence[ForecastPoint]) -> list[Block]:
    """The fixed fleet per scale, then the autoscaled one beside it when the scenario has one,
    then the simulator core that ran them."""
    auto = autoscale_table(points)
    blocks: list[Block] = [fixed_fleet_table(points)]
    if auto is not None:
        blocks += ["autoscaled (the scenario's fleet.autoscaler) against the fixed fleet:", auto]
    return [*blocks, cores_line(points)]


def budget_blocks(
    verdicts: Sequence[BudgetVerdict], points: Sequence[ForecastPoint]
) -> list[Block]:
    """The scenario's cost budgets: each one's figure at every scale (the fleet meeting the
    SLOs there; tokens are input and output together) and its verdict, then each one missed in
    words, as a cost alert. Nothing without budgets."""
    if not verdicts:
        return []
    ordered = sorted(points, key=lambda p: p.scale)
    spends = [Spend.of(p) for p in ordered]
    rows: list[list[object]] = []
    for v in verdicts:
        figures = ["-" if s is None else usd(s.figure(v.budget.metric)) for s in spends]
        if v.passed:
            verdict = "PASS" if math.isfinite(v.figure) else "not judged"
        else:
            verdict = f"FAIL: crossed at x{v.scale:g}"
        limit = f"{v.budget.op} {usd(v.budget.value)}"
        rows.append([v.budget.metric, limit, *figures, verdict])
    headers = ["cost budget", "limit", *(f"x{p.scale:g}" for p in ordered), "verdict"]
    alerts = [f"COST ALERT: {v.message}" for v in verdicts if not v.passed]
    return ["cost budgets (US dollars; tokens: input and output):", Table(headers, rows), *alerts]


def cores_line(points: Sequence[ForecastPoint]) -> str:
    """Which simulator core ran the forecast's fleets: the fast one (compiled, the reference
    model's records) where it covers them, the reference (SimPy) elsewhere."""
    runs = Counter(
        e.core
        for p in points
        for e in [*p.tried, p.best, p.autoscaled]
        if e is not None and e.simulated and e.core
    )
    if not runs:
        return "simulator core: none ran (every fleet refused unsimulated)"
    said = ", ".join(f"{core} for {n} fleet sizes" for core, n in sorted(runs.items()))
    return f"simulator core: {said} (fast: compiled, the reference model's records)"


def deployment_blocks(choices: Sequence[Choice]) -> list[Block]:
    """Per scale: the cheapest deployment and fleet meeting every SLO, the runners-up, and why
    each other option was not chosen."""
    blocks: list[Block] = []
    headers = ["deployment", "replicas (90%)", "GPUs", "$/month (90%)", "TTFT p95 ms"]
    headers += ["E2E p95 ms", "load", "KV GiB/GPU", "KV tokens", "verdict"]
    for c in choices:
        best = c.best
        cheapest = best.cost_per_month_usd if best else None
        head = f"x{c.scale:g} ({c.rate:.3g} req/s): "
        rows: list[list[object]] = []
        for o in c.outcomes:
            e = o.point.best if o.point else None
            m = o.option.memory
            kv: list[object] = [m.kv_cache_gib, m.kv_tokens] if m.fits else ["-", "-"]
            cost = o.cost_per_month_usd
            if e is None or cost is None or cheapest is None:
                rows.append([o.option.label, "-", "-", "-", "-", "-", "-", *kv, o.why])
                continue
            if o is best:
                head += f"{o.option.label}, {e.replicas:,} replicas, ${cost:,.0f}/month"
            gpus = e.replicas * o.option.deployment.tensor_parallel
            verdict = "chosen" if o is best else f"+${cost - cheapest:,.0f}/month"
            point = o.point
            assert point is not None
            replicas = _with_interval(e.replicas, point.replicas_low, point.replicas_high)
            rows.append(
                [o.option.label, replicas, gpus, _cost_with_interval(point), e.ttft_p95_ms.mean,
                 e.e2e_p95_ms.mean, f"{e.load:.0%}", *kv, verdict]
            )  # fmt: skip
        blocks += [head if best else head + "no option meets every SLO", Table(headers, rows)]
    return blocks
