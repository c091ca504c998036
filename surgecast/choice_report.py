"""The deployment choice as a page: per scale, cost against p95 TTFT for every option simulated
(the Pareto front drawn through the options no other beats on both), then the tables."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt

from simulator.forecast.deployments import Choice, Outcome
from surgecast.files import write_whole
from surgecast.report import TEMPLATES, Figure, Section, VerdictLine, as_figure
from surgecast.tables import deployment_blocks


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, latency) points no other point beats on both, by cost."""
    front: list[tuple[float, float]] = []
    for cost, latency in sorted(points):
        if not front or latency < front[-1][1]:
            front.append((cost, latency))
    return front


def _met(c: Choice) -> list[tuple[float, float, Outcome]]:
    met = []
    for o in c.outcomes:
        e = o.point.best if o.point else None
        if e is not None and o.cost_per_month_usd is not None:
            met.append((o.cost_per_month_usd, e.ttft_p95_ms.mean, o))
    return met


def pareto_plot(choices: Sequence[Choice]) -> Figure:
    fig, axes = plt.subplots(1, len(choices), figsize=(5.2 * len(choices), 3.8), squeeze=False)
    for ax, c in zip(axes[0], choices, strict=True):
        met = _met(c)
        ax.scatter([m[0] for m in met], [m[1] for m in met], s=14, alpha=0.6, label="met the SLOs")
        front = pareto_front([(m[0], m[1]) for m in met])
        if front:
            ax.step(*zip(*front, strict=True), where="post", color="tab:orange", label="front")
        best = next((m for m in met if m[2] is c.best), None)
        if best is not None:
            ax.scatter([best[0]], [best[1]], marker="*", s=160, color="tab:red", label="chosen")
        ax.set_xscale("log")
        ax.set_title(f"x{c.scale:g}: {len(met)} options simulated", fontsize=10)
        ax.set_xlabel("cost per month (USD)")
        ax.set_ylabel("TTFT p95 (ms)")
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return as_figure(fig, "Cost against TTFT p95 of every option simulated, the Pareto front")


def write_choice_page(choices: Sequence[Choice], scenario_name: str, path: Path) -> None:
    """A standalone HTML page of the choice (plots inline)."""
    verdict = [
        VerdictLine(f"x{c.scale:g}:", "good", _said(c)) if c.best
        else VerdictLine(f"x{c.scale:g}:", "bad", "no option meets every SLO")
        for c in choices
    ]  # fmt: skip
    blocks = deployment_blocks(choices)
    sections = [Section("Cost against latency", figures=[pareto_plot(choices)])]
    sections += [
        Section(str(head), blocks=[table])
        for head, table in zip(blocks[::2], blocks[1::2], strict=True)
    ]
    page = TEMPLATES.get_template("report.html.j2").render(
        title=f"surgecast deployments for {scenario_name}",
        verdict=verdict,
        good=all(c.best for c in choices),
        header="Options rejected unsimulated cost more at their load bound than the choice; "
        "simulate every option for the whole front with --exhaustive.",
        sections=sections,
    )
    write_whole(path, page)


def _said(c: Choice) -> str:
    best = c.best
    assert best is not None and best.point is not None and best.point.best is not None
    return (
        f"{best.option.label}, {best.point.best.replicas:,} replicas, "
        f"${best.cost_per_month_usd:,.0f}/month"
    )


def choice_json(choices: Sequence[Choice]) -> list[dict[str, object]]:
    """The choice as plain data: per scale, every option with its fleet or why it has none."""
    out: list[dict[str, object]] = []
    for c in choices:
        options = []
        for o in c.outcomes:
            e = o.point.best if o.point else None
            m = o.option.memory
            options.append(
                {
                    "deployment": o.option.deployment.model_dump(),
                    "label": o.option.label,
                    "chosen": o is c.best,
                    "why_not": o.why or None,
                    "replicas": e.replicas if e else None,
                    "replicas_90pct": [o.point.replicas_low, o.point.replicas_high]
                    if o.point and o.point.replicas_low is not None
                    else None,
                    "cost_per_month_usd": o.cost_per_month_usd,
                    "ttft_p95_ms": e.ttft_p95_ms.mean if e else None,
                    "e2e_p95_ms": e.e2e_p95_ms.mean if e else None,
                    "load": e.load if e else None,
                    "fewest_replicas_by_load_bound": o.fewest_replicas,
                    "kv_cache_gib_per_gpu": m.kv_cache_gib if m.fits else None,
                    "kv_tokens": m.kv_tokens if m.fits else None,
                }
            )
        out.append({"scale": c.scale, "rate": c.rate, "options": options})
    return out
