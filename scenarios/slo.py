"""SLO thresholds written like k6's: `p(95) < 800` (milliseconds), `rate < 0.01` for error_rate."""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_EXPR = re.compile(
    r"^\s*(?P<stat>p\(\s*(?P<q>\d+(?:\.\d+)?)\s*\)|avg|med|min|max|rate)\s*"
    r"(?P<op><=|>=|<|>)\s*(?P<value>[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*$"
)


@dataclass(frozen=True)
class Threshold:
    metric: str  # ttft, itl, tpot, e2e (milliseconds) or error_rate (fraction)
    stat: str  # "p95", "avg", "med", "min", "max" or "rate"
    op: str
    value: float
    expr: str

    @property
    def quantile(self) -> float | None:
        return float(self.stat[1:]) if self.stat.startswith("p") else None

    def holds(self, observed: float) -> bool:
        return _OPS[self.op](observed, self.value)

    def __str__(self) -> str:
        return f"{self.metric}: {self.expr}"


def check_syntax(expr: str) -> str:
    """`expr` if it is a threshold expression; ValueError repeating it otherwise."""
    if not _EXPR.match(expr):
        raise ValueError(
            f"SLO {expr!r} is not of the form 'p(95) < 800', 'avg < 200' or 'rate < 0.01'"
        )
    return expr


def parse_threshold(metric: str, expr: str) -> Threshold:
    """Parse one expression; ValueError says what is wrong and repeats the expression."""
    m = _EXPR.match(check_syntax(expr))
    assert m is not None
    stat = m["stat"]
    if stat.startswith("p("):
        q = float(m["q"])
        if not 0 < q <= 100:
            raise ValueError(f"SLO {expr!r}: percentile must be in (0, 100], got {q}")
        stat = f"p{m['q']}"
    if metric == "error_rate" and stat != "rate":
        raise ValueError(f"SLO {expr!r}: error_rate takes 'rate', as in 'rate < 0.01'")
    if metric != "error_rate" and stat == "rate":
        raise ValueError(f"SLO {expr!r}: 'rate' is for error_rate; latencies take p(95), avg, ...")
    return Threshold(metric, stat, m["op"], float(m["value"]), expr.strip())
