"""Cost budgets (`cost.budgets`): validated like SLOs, judged on the forecast's spend at each
scale (hand-worked figures), and by `surgecast forecast` on the command line (exit 99)."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios.cost_budget import parse_cost_budget
from scenarios.spec import ScenarioError, load_scenario
from tests.conftest import scenario_dict, write_scenario


def test_budgets_parse_as_thresholds_in_us_dollars() -> None:
    bare = parse_cost_budget("monthly_usd", "12000")
    assert (bare.op, bare.value, bare.stat) == ("<=", 12000.0, "usd")
    assert bare.holds(12000.0) and not bare.holds(12000.01)
    strict = parse_cost_budget("per_million_tokens_usd", "< $3.5")
    assert (strict.op, strict.value) == ("<", 3.5) and not strict.holds(3.5)
    assert parse_cost_budget("per_request_usd", "<= 0.002 USD").value == 0.002
    assert parse_cost_budget("per_session_usd", "$0.05").value == 0.05


def test_every_bad_budget_is_reported_at_once_with_its_field_path(tmp_path: Path) -> None:
    data = scenario_dict(
        cost={
            "gpu_hour_usd": -2,
            "budgets": {
                "monthly_usd": -5000,
                "per_million_tokens_usd": "3 EUR",
                "per_million_output_tokens_usd": "< 40 ms",
                "per_request_usd": "> 0.01",
                "per_session_usd": "-$0.5",
                "per_token_usd": 1,
            },
        }
    )
    path = write_scenario(tmp_path / "s.yaml", data)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    text = str(e.value)
    assert all(line.startswith(f"{path}: ") for line in text.splitlines())  # names the file
    expected = [
        "cost.gpu_hour_usd: Input should be greater than or equal to 0, got -2",
        "cost.budgets.monthly_usd: budget '-5000': must be a positive amount of US dollars",
        "cost.budgets.per_million_tokens_usd: budget '3 EUR': unit 'EUR' is not money in US",
        "cost.budgets.per_million_output_tokens_usd: budget '< 40 ms': unit 'ms' is not money",
        "cost.budgets.per_request_usd: budget '> 0.01': a budget bounds spend from above",
        "cost.budgets.per_session_usd: budget '-$0.5': must be a positive amount",
        "cost.budgets.per_token_usd: unknown field",
    ]
    for message in expected:
        assert message in text
    assert len(e.value.problems) == len(expected)


@pytest.mark.parametrize(
    ("expr", "why"),
    [
        ("0", "must be a positive amount"),
        ("twelve thousand", "is not of the form"),
        ("12,000", "is not of the form"),
        ("< 5 %", "unit '%' is not money"),
        (">= 5", "bounds spend from above"),
    ],
)
def test_a_budget_that_is_not_an_amount_of_dollars_is_refused(expr: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_cost_budget("monthly_usd", expr)


def test_a_regression_budget_on_cost_per_token_parses_like_the_others() -> None:
    from scenarios.regress import parse_budget

    b = parse_budget("cost_per_million_tokens", "rate regress < 10%")
    assert b.relative and b.limit == pytest.approx(0.10) and b.metric == "cost_per_million_tokens"
    with pytest.raises(ValueError, match="takes 'rate'"):
        parse_budget("cost_per_million_tokens", "p(95) regress < 10%")
