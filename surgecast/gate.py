"""The regression gate: a candidate's runs against a baseline's, by the scenario's budgets and
SLOs. A budget fails only when its regression is significant (the interval lies wholly on the
worse side of 0) and over budget; an SLO fails as `surgecast run` judges it, on any candidate run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from scenarios.metrics import check_slos
from scenarios.regress import Budget
from scenarios.slo import Threshold
from scenarios.spec import Cost, Scenario, parse_scenario
from scenarios.table import RequestTable
from surgecast.compare import (
    Change,
    Comparison,
    Run,
    budget_stats,
    compare,
    goodput_limits,
)
from surgecast.contracts import RunMeta
from surgecast.junit import Case
from surgecast.rundir import InvalidRun, RunFolder
from surgecast.tables import markdown


@dataclass(frozen=True)
class Verdict:
    kind: str  # "regression" or "slo"
    name: str  # e.g. "ttft: p(95) regress < 10%"
    passed: bool
    observed: str  # the change (or the value) observed
    interval: str
    message: str  # why it failed, or what held


def load_run(path: Path) -> Run:
    """A run folder's requests as a `Run`, priced by its run.json (`usd_per_hour`); InvalidRun
    when its run.json says it is invalid."""

    folder = RunFolder(path)
    meta = folder.meta()
    validity = meta.validity
    if meta.status != "finished" or (validity is not None and not validity.valid):
        reasons = "; ".join(validity.reasons if validity else []) or f"status {meta.status!r}"
        raise InvalidRun(f"{path}: the run is invalid ({reasons}): rerun it before gating on it")
    return Run.of(meta.run_id, folder.table(), usd_per_hour(meta))


def usd_per_hour(meta: RunMeta) -> float:
    """What the run's target cost an hour by its own scenario's `cost` section: its replicas (a
    simulated fleet's, else one) x GPUs per replica x the GPU's price; 0 (not priced) when that
    section does not validate."""
    try:
        cost = Cost.model_validate(meta.scenario.get("cost", {"gpu_hour_usd": 2.0}))
    except ValidationError:
        return 0.0
    return (meta.target.replicas or 1) * cost.gpus_per_replica * cost.gpu_hour_usd


def run_scenario(path: Path) -> Scenario:
    """The scenario a run folder's run.json keeps; ScenarioError when it no longer validates
    (a bad budget, say)."""
    meta = RunFolder(path).meta()
    base = Path(meta.scenario_file).resolve().parent if meta.scenario_file else None
    return parse_scenario(meta.scenario, str(RunFolder(path).run_json), base)


def _pct_or_abs(value: float, budget: Budget, unit: str) -> str:
    if not math.isfinite(value):
        return "n/a"
    if budget.relative:
        return f"{value * 100:+.1f}%"
    return f"{value:+.4g}{' ' + unit if unit else ''}"


def judge_budget(budget: Budget, change: Change) -> Verdict:
    """Fail only a significant regression over budget."""
    worse, low, high = change.regression(budget.relative)
    observed = _pct_or_abs(worse, budget, change.unit)
    span = f"[{_pct_or_abs(low, budget, change.unit)}, {_pct_or_abs(high, budget, change.unit)}]"
    significant = low > 0
    if not math.isfinite(worse):
        failed, why = False, "no samples (or a zero baseline for a relative budget): not judged"
    elif significant and not budget.within(worse):
        failed, why = True, "significant regression over budget"
    elif significant:
        failed, why = False, "significant regression, within budget"
    elif worse > 0 and not budget.within(worse):
        failed, why = False, "over budget but not significant (interval includes 0)"
    else:
        failed, why = False, "within budget"
    message = (
        f"{change.name} regressed {observed} (worse is positive), interval {span}, "
        f"budget {budget.expr!r}: {why}"
    )
    return Verdict("regression", str(budget), not failed, observed, span, message)


def judge_slos(scenario: Scenario, candidate: Sequence[Run]) -> list[Verdict]:
    """Each SLO on each candidate run, as `surgecast run` judges it: the scenario-wide ones on
    all requests, a persona's own on its requests alone (where the run has any); one fails when
    any run misses it."""
    checks: list[tuple[str | None, Threshold]] = [(None, t) for t in scenario.thresholds()]
    for name, own in scenario.persona_thresholds().items():
        checks += [(name, t) for t in own]
    verdicts = []
    for persona, t in checks:
        tables = [(r.label, _requests_of(r.table, persona)) for r in candidate]
        results = [(label, check_slos(table, [t])[0]) for label, table in tables if len(table)]
        if not results:
            continue  # no request of the persona: nothing to judge
        observed = ", ".join(f"{s.observed:.4g}" for _, s in results)
        passed = all(s.passed for _, s in results)
        name = f"{persona}: {t}" if persona else str(t)
        runs = ", ".join(label for label, _ in results)
        message = f"{name} observed {observed} on {runs}"
        verdicts.append(Verdict("slo", name, passed, observed, "", message))
    return verdicts


def _requests_of(table: RequestTable, persona: str | None) -> RequestTable:
    """The persona's rows (None: all of them)."""
    if persona is None:
        return table
    if persona not in table.personas:
        return table.select(np.zeros(len(table), bool))
    return table.select(table.persona == table.personas.index(persona))


@dataclass(frozen=True)
class GateResult:
    comparison: Comparison
    verdicts: list[Verdict]

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


def gate(
    scenario: Scenario, baseline: Sequence[Run], candidate: Sequence[Run], seed: int = 0
) -> GateResult:
    """Judge the candidate by the scenario's regression budgets and SLOs."""
    spec = scenario.regressions
    budgets = spec.budgets()
    comparison = compare(
        baseline,
        candidate,
        budget_stats(budgets) or None,
        limits=goodput_limits(scenario.thresholds()),
        confidence=spec.confidence,
        resamples=spec.resamples,
        seed=seed,
    )
    verdicts = []
    for b in budgets:
        change = comparison.find(b.metric, "p50" if b.stat == "med" else b.stat)
        assert change is not None  # budget_stats asked for it
        verdicts.append(judge_budget(b, change))
    return GateResult(comparison, verdicts + judge_slos(scenario, candidate))


def junit_cases(result: GateResult) -> list[Case]:
    return [
        Case(
            f"surgecast.gate.{'regressions' if v.kind == 'regression' else 'slos'}",
            v.name,
            None if v.passed else v.message,
            v.message,
        )
        for v in result.verdicts
    ]


def summary_markdown(result: GateResult) -> str:
    """A Markdown verdict and table, fit for a CI step summary ($GITHUB_STEP_SUMMARY)."""
    failed = [v for v in result.verdicts if not v.passed]
    head = (
        "### surgecast gate: PASS"
        if not failed
        else f"### surgecast gate: FAIL ({len(failed)} of {len(result.verdicts)} checks)"
    )
    c = result.comparison
    runs = (
        f"baseline {', '.join(r.label for r in c.baseline)}; candidate "
        f"{', '.join(r.label for r in c.candidate)}; {c.confidence:.0%} bootstrap intervals "
        f"({c.resamples} resamples)"
    )
    rows = [
        [
            "PASS" if v.passed else "**FAIL**",
            v.kind,
            v.name,
            v.observed,
            v.interval or "-",
            v.message.rsplit(": ", 1)[-1] if v.kind == "regression" else "",
        ]
        for v in result.verdicts
    ]
    headers = ["result", "kind", "check", "observed", "interval", "why"]
    body = markdown(headers, rows) if rows else "(no budgets and no SLOs in the scenario)"
    return f"{head}\n\n{runs}\n\n{body}\n"
