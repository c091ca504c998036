"""Cost budgets written like SLO thresholds: `< 12000` or `<= $3.50` or `12000 USD`.

A budget bounds a forecast spend figure from above, in US dollars: the monthly spend, the cost
per million tokens, per request or per session. A bare number (`12000`) reads as `<= 12000`. The
parsed budget is an SLO `Threshold` (its stat `usd`), so it is held or missed as one is.
"""

from __future__ import annotations

import re
from typing import Any

from scenarios.slo import Threshold

# the budgets a scenario's `cost.budgets` may set: field name -> the figure it bounds
COST_METRICS: dict[str, str] = {
    "monthly_usd": "monthly spend",  # 730 hours
    "per_million_tokens_usd": "cost per million tokens (input and output)",
    "per_million_output_tokens_usd": "cost per million output tokens",
    "per_request_usd": "cost per request",  # answered
    "per_session_usd": "cost per session",  # started
}
_EXPR = re.compile(
    r"^\s*(?P<op><=|<|>=|>)?\s*(?P<sign>[-+]?)\s*\$?\s*"
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*(?P<unit>[^\d\s.,+-].*?)?\s*$"
)
_USD = ("usd", "us$", "$", "dollars", "dollar")


def as_expression(value: Any) -> Any:
    """A bare number as a string (`12000` -> `'12000'`, which reads as `<= 12000`); anything
    else as given (a string is parsed later; a bool or a list is refused by the string field)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


def parse_cost_budget(metric: str, expr: str) -> Threshold:
    """Parse one budget; ValueError says what is wrong and repeats the expression."""
    if metric not in COST_METRICS:
        known = ", ".join(COST_METRICS)
        raise ValueError(f"unknown cost budget {metric!r}: budgets are {known}")
    m = _EXPR.match(expr)
    if m is None:
        raise ValueError(
            f"budget {expr!r} is not of the form '< 12000', '<= $3.5' or '12000 USD' "
            "(an amount of US dollars, bounded from above)"
        )
    unit = (m["unit"] or "").strip()
    if unit and unit.lower() not in _USD:
        raise ValueError(
            f"budget {expr!r}: unit {unit!r} is not money in US dollars: write the amount "
            "bare, with '$' or with 'USD'"
        )
    op = m["op"] or "<="
    if op not in ("<", "<="):
        raise ValueError(f"budget {expr!r}: a budget bounds spend from above: use '<' or '<='")
    value = -float(m["value"]) if m["sign"] == "-" else float(m["value"])
    if value <= 0:
        raise ValueError(f"budget {expr!r}: must be a positive amount of US dollars, got {value:g}")
    return Threshold(metric, "usd", op, value, expr.strip())
