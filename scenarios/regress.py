"""Regression budgets written like k6 thresholds: `p(95) regress < 10%`, `rate regress < 0.01`.

A budget bounds how much worse a candidate run may be than its baseline: relative with `%`,
else absolute in the metric's unit (milliseconds for latencies, a fraction for error_rate,
requests per second for throughput and goodput, where worse means lower, US dollars per million
tokens for cost_per_million_tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LATENCIES = ("ttft", "itl", "tpot", "e2e")
RATES = ("error_rate", "throughput", "goodput", "cost_per_million_tokens")
_EXPR = re.compile(
    r"^\s*(?P<stat>p\(\s*(?P<q>\d+(?:\.\d+)?)\s*\)|avg|med|rate)\s+regress\s*(?P<op><=|<)\s*"
    r"(?P<value>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*(?P<pct>%?)\s*$"
)


@dataclass(frozen=True)
class Budget:
    metric: str  # ttft, itl, tpot, e2e, error_rate, throughput, goodput, cost_per_million_tokens
    stat: str  # "p95", "avg", "med" or "rate"
    limit: float  # a fraction when relative (10% -> 0.10), else in the metric's unit
    relative: bool
    inclusive: bool  # `<=` rather than `<`
    expr: str

    @property
    def quantile(self) -> float | None:
        if self.stat == "med":
            return 50.0
        return float(self.stat[1:]) if self.stat.startswith("p") else None

    def within(self, change: float) -> bool:
        """Whether a regression of `change` (worse is positive) keeps to the budget."""
        return change <= self.limit if self.inclusive else change < self.limit

    def __str__(self) -> str:
        return f"{self.metric}: {self.expr}"


def parse_budget(metric: str, expr: str) -> Budget:
    """Parse one budget; ValueError says what is wrong and repeats the expression."""
    m = _EXPR.match(expr)
    if m is None:
        raise ValueError(
            f"budget {expr!r} is not of the form 'p(95) regress < 10%', 'avg regress < 50' "
            "or 'rate regress < 0.01'"
        )
    if metric not in LATENCIES + RATES:
        known = ", ".join(LATENCIES + RATES)
        raise ValueError(f"unknown metric {metric!r}: budgets are for {known}")
    stat = m["stat"]
    if stat.startswith("p("):
        q = float(m["q"])
        if not 0 < q < 100:
            raise ValueError(f"budget {expr!r}: percentile must be in (0, 100), got {q:g}")
        stat = f"p{m['q']}"
    if metric in RATES and stat != "rate":
        raise ValueError(f"budget {expr!r}: {metric} takes 'rate', as in 'rate regress < 0.01'")
    if metric in LATENCIES and stat == "rate":
        raise ValueError(f"budget {expr!r}: latencies take p(95), avg or med, not 'rate'")
    relative = m["pct"] == "%"
    limit = float(m["value"]) / (100.0 if relative else 1.0)
    return Budget(metric, stat, limit, relative, m["op"] == "<=", expr.strip())
