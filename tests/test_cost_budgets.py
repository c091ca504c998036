"""Cost budgets (`cost.budgets`): validated like SLOs, judged on the forecast's spend at each
scale (hand-worked figures), and by `surgecast forecast` on the command line (exit 99)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from scenarios.cost_budget import parse_cost_budget
from scenarios.objectives import CostBudgets
from scenarios.spec import Scenario, ScenarioError, load_scenario
from simulator.forecast.search import ZERO, Evaluation, ForecastPoint
from simulator.forecast.seeds import Estimate
from simulator.forecast.spend import Spend, judge_budgets, usd
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


def _point(scale: float, replicas: int, per_replica_month: float) -> ForecastPoint:
    """A fleet at `scale` x (5 requests/s, 500 output and 1000 prompt tokens/s, 1.25
    sessions/s), each replica costing `per_replica_month`."""

    def flat(x: float) -> Estimate:
        return Estimate(x, x, x)

    best = Evaluation(
        replicas, True, {}, ZERO, ZERO, flat(5.0 * scale), ZERO,
        output_tokens_per_s=flat(500.0 * scale), input_tokens_per_s=flat(1000.0 * scale),
        sessions_per_s=flat(1.25 * scale),
    )  # fmt: skip
    return ForecastPoint(scale, 5.0 * scale, best, replicas * per_replica_month)


# 3 replicas of 2 GPUs at $2.50 an hour, 730 hours: 3 x 2 x 2.5 x 730 = $10,950 a month
MONTH = 3 * 2 * 2.5 * 730


def test_spend_per_unit_by_hand() -> None:
    """A month is 730 h = 2,628,000 s. At 1,500 tokens/s (1,000 in, 500 out) it serves
    3,942 million tokens: $10,950 / 3,942 = $2.7778 per million; output alone 1,314 million:
    $8.3333; 5 requests/s is 13,140,000 requests: $0.00083333 each; 1.25 sessions/s is
    3,285,000 sessions: $0.0033333 each."""
    assert MONTH == 10950.0
    spend = Spend.of(_point(1.0, 3, MONTH / 3))
    assert spend is not None
    assert spend.monthly_usd == pytest.approx(10950.0)
    assert spend.per_million_tokens_usd == pytest.approx(25 / 9)  # 10,950 / 3,942
    assert spend.per_million_output_tokens_usd == pytest.approx(25 / 3)  # 10,950 / 1,314
    assert spend.per_request_usd == pytest.approx(1 / 1200)  # 10,950 / 13,140,000
    assert spend.per_session_usd == pytest.approx(1 / 300)  # 10,950 / 3,285,000
    # the forecast's existing output-only figure agrees
    assert _point(1.0, 3, MONTH / 3).cost_per_million_tokens_usd == pytest.approx(25 / 3)
    assert Spend.of(ForecastPoint(10.0, 50.0, None, None)) is None  # no fleet met the SLOs


def test_a_budget_fails_at_the_first_scale_over_it() -> None:
    """x1: 3 replicas, $10,950; x10: 30 replicas, $109,500; x100: 290 replicas (the fleet
    grows a little less than the traffic), $1,058,500. A $12,000 monthly budget holds at x1 and
    is crossed at x10; per million tokens the fleet costs $2.7778 at x1 and x10 and $2.6857 at
    x100 (290 / 300 of it): a '< $2.7' budget is crossed at x1 already."""
    per_replica = MONTH / 3
    points = [_point(100.0, 290, per_replica), _point(1.0, 3, per_replica)]
    points.append(_point(10.0, 30, per_replica))
    budgets = CostBudgets(monthly_usd=12000, per_million_tokens_usd="< $2.7").thresholds()
    monthly, per_token = judge_budgets(budgets, points)
    assert not monthly.passed and monthly.scale == 10.0
    assert monthly.figure == pytest.approx(109500.0)
    assert monthly.message == (
        "cost.budgets.monthly_usd '12000' crossed at x10: forecast monthly spend $109,500, "
        "limit <= $12,000; x1: $10,950, within it"
    )
    assert not per_token.passed and per_token.scale == 1.0
    assert per_token.figure == pytest.approx(25 / 9)
    assert "$2.78, limit < $2.70" in per_token.message

    loose = CostBudgets(per_request_usd=0.001, per_session_usd="$0.004").thresholds()
    for verdict in judge_budgets(loose, points):
        assert verdict.passed and verdict.scale == 100.0, verdict.message
        assert "holds at every scale judged" in verdict.message


def test_a_scale_without_a_fleet_is_not_judged_and_says_so() -> None:
    points = [_point(1.0, 3, MONTH / 3), ForecastPoint(10.0, 50.0, None, None)]
    (verdict,) = judge_budgets(CostBudgets(monthly_usd=20000).thresholds(), points)
    assert verdict.passed and "not judged at x10 (no fleet met the SLOs)" in verdict.message
    (none,) = judge_budgets(CostBudgets(monthly_usd=1).thresholds(), points[1:])
    assert none.passed and "not judged" in none.message


@pytest.mark.parametrize("turns", [1, 3])
def test_a_seed_counts_the_prompt_tokens_and_sessions_it_served(turns: int) -> None:
    """Sessions start evenly at 4 a second, each of `turns` turns, prompts of 200 tokens (with
    history after the first turn) and answers of 50, on two replicas with room to spare: the
    steady 36 s of a 40 s window serve 4 sessions a second; with one turn, 800 prompt tokens
    and 200 output tokens a second."""
    from simulator.forecast.seeds import SeedJob, run_seed
    from tests.test_forecast import ENGINE

    data = scenario_dict(
        traffic={"arrival": {"type": "constant-arrival-rate", "rate": 4}, "duration_s": 40},
        workload={
            "prompt_tokens": {"dist": "constant", "value": 200},
            "output_tokens": {"dist": "constant", "value": 50},
        },
        session={"turns": {"dist": "constant", "value": turns}},
    )
    scenario = Scenario.model_validate(data)
    outcome = run_seed(SeedJob(scenario, ENGINE, 1, 1.0, 2, 40.0))
    assert outcome.sessions_per_s == pytest.approx(4.0, abs=1 / 36)
    if turns == 1:
        assert outcome.input_tokens_per_s == pytest.approx(800.0, abs=200 / 36)
        assert outcome.output_tokens_per_s == pytest.approx(200.0, abs=50 / 36)
    else:  # later turns carry the history: more prompt tokens per request than the first
        assert outcome.throughput == pytest.approx(12.0, rel=0.05)
        assert outcome.input_tokens_per_s > 3 * 800.0


def test_the_rates_read_back_from_forecast_json_and_older_files_are_not_judged(
    tmp_path: Path,
) -> None:
    import json

    from surgecast.contracts import read_forecast, write_forecast

    path = tmp_path / "forecast.json"
    point = _point(1.0, 3, MONTH / 3)
    write_forecast(path, [point])
    (again,) = read_forecast(path)
    assert again.best == point.best and Spend.of(again) == Spend.of(point)
    doc = json.loads(path.read_text())
    for key in ("input_tokens_per_s", "sessions_per_s"):  # as written before budgets
        del doc["points"][0]["best"][key]
    path.write_text(json.dumps(doc))
    (old,) = read_forecast(path)
    spend = Spend.of(old)
    assert spend is not None and spend.monthly_usd == pytest.approx(MONTH)
    budgets = CostBudgets(monthly_usd=20000, per_session_usd=0.01).thresholds()
    monthly, session = judge_budgets(budgets, [old])
    assert monthly.passed and "holds" in monthly.message
    assert session.passed and "not judged: the forecast kept no rate" in session.message


def _forecast(tmp_path: Path, name: str, budgets: dict[str, Any]) -> tuple[int, str, Any]:
    """`surgecast forecast` at x1 and x10 on the known engine (no calibration noise), GPUs at
    $2.50 an hour: its exit code, its output and its forecast.json."""
    import json

    from surgecast.contracts import write_calibration
    from tests.conftest import run_cli
    from tests.test_forecast import known

    data = scenario_dict(
        traffic={"rate": 4, "duration_s": 20, "seed": 3},
        slos={"ttft": "p(95) < 300"},
        forecast={"seeds": 2, "duration_s": 30, "workers": 1, "intervals": False},
        cost={"gpu_hour_usd": 2.5, "budgets": budgets},
    )
    path = write_scenario(tmp_path / f"{name}.yaml", data)
    cal = tmp_path / "cal.json"
    write_calibration(cal, known())
    fc = tmp_path / f"{name}.json"
    args = ["--calibration", str(cal), "--scales", "10", "--json", str(fc)]
    result = run_cli("forecast", str(path), *args)
    return result.returncode, result.stdout + result.stderr, json.loads(fc.read_text())


def test_a_forecast_over_budget_exits_99_naming_the_budget_and_the_scale(tmp_path: Path) -> None:
    """The fleet at x10 needs more replicas than at x1: a monthly budget between their costs
    (each replicas x $2.50 x 730 h) holds at x1 and is crossed at x10."""
    code, text, doc = _forecast(tmp_path, "over", {"monthly_usd": 2000, "per_request_usd": 1})
    one, ten = (p["best"]["replicas"] for p in doc["points"])
    assert one * 2.5 * 730 <= 2000 < ten * 2.5 * 730, (one, ten)
    assert code == 99, text[-3000:]
    alert = (
        f"COST ALERT: cost.budgets.monthly_usd '2000' crossed at x10: forecast monthly spend "
        f"${ten * 2.5 * 730:,.0f}, limit <= $2,000; x1: ${one * 2.5 * 730:,.0f}, within it"
    )
    assert alert in text
    assert "| per_request_usd " in text and "COST ALERT: cost.budgets.per_request_usd" not in text


def test_a_forecast_within_its_budgets_exits_0(tmp_path: Path) -> None:
    budgets = {"monthly_usd": "< 20000 USD", "per_million_tokens_usd": 50, "per_session_usd": 1}
    code, text, doc = _forecast(tmp_path, "within", budgets)
    assert code == 0, text[-3000:]
    assert "COST ALERT" not in text and text.count("| PASS ") == 3
    # per million tokens at x10, by hand from the forecast's own rates
    ten = doc["points"][1]
    tokens = ten["best"]["input_tokens_per_s"]["mean"] + ten["best"]["output_tokens_per_s"]["mean"]
    per_million = ten["cost_per_month_usd"] / (tokens * 730 * 3600) * 1e6
    assert ten["cost_per_month_usd"] == ten["best"]["replicas"] * 2.5 * 730
    row = next(line for line in text.splitlines() if line.startswith("| per_million_tokens_usd"))
    assert f" {usd(per_million)} " in row, (row, per_million)


def test_cost_per_token_against_a_baseline_by_hand_and_through_the_gates_bootstrap() -> None:
    """Two runs of the same requests (1,990 of 2,000 answered, 10 output tokens each, no prompt
    counts): priced at $2 an hour, a run of span S costs 2 S / 3600 dollars, so
    2 S / 3600 / 19,900 x 1e6 per million tokens. The candidate on twice the GPUs costs twice
    that per token: +100%, significant, over a 10% budget; at the same price, no change."""
    from scenarios.regress import parse_budget
    from surgecast.compare import Run, compare
    from surgecast.gate import judge_budget
    from tests.test_gate import _table

    rng = np.random.default_rng(5)
    t = rng.lognormal(np.log(0.1), 0.5, 2000)
    table = _table(t, t * 2, failed=10)
    base = Run.of("b", table, usd_per_hour=2.0)
    same, double = Run.of("c", table, usd_per_hour=2.0), Run.of("d", table, usd_per_hour=4.0)
    expected = 2.0 * base.span_s / 3600 / 19_900 * 1e6
    budget = parse_budget("cost_per_million_tokens", "rate regress < 10%")
    (up,) = compare([base], [double], [("cost_per_million_tokens", "rate")]).changes
    assert up.baseline == pytest.approx(expected) and up.candidate == pytest.approx(2 * expected)
    assert up.unit == "USD/Mtok" and up.relative == pytest.approx(1.0)
    assert up.significant and up.rel_low > 0.5
    verdict = judge_budget(budget, up)
    assert (
        not verdict.passed and "cost_per_million_tokens rate regressed +100.0%" in verdict.message
    )
    (flat,) = compare([base], [same], [("cost_per_million_tokens", "rate")]).changes
    assert flat.relative == 0.0 and judge_budget(budget, flat).passed
    unpriced = Run.of("u", table)  # no price: a relative change cannot be judged
    (unknown,) = compare([unpriced], [double], [("cost_per_million_tokens", "rate")]).changes
    assert (
        judge_budget(budget, unknown).passed
        and "not judged" in judge_budget(budget, unknown).message
    )


def test_a_run_is_priced_by_its_own_run_json() -> None:
    """4 simulated replicas x 2 GPUs x $3 an hour = $24 an hour; a measured target is one
    replica; a cost section that no longer validates prices nothing."""
    from surgecast.contracts import RunMeta
    from surgecast.gate import usd_per_hour
    from tests.conftest import run_json

    scenario = scenario_dict(cost={"gpu_hour_usd": 3.0, "gpus_per_replica": 2})
    simulated = run_json(
        "s", scenario, source="simulated", target={"kind": "simulated", "replicas": 4}
    )
    assert usd_per_hour(RunMeta.model_validate(simulated)) == 24.0
    assert usd_per_hour(RunMeta.model_validate(run_json("m", scenario))) == 6.0
    broken = scenario_dict(cost={"gpu_hour_usd": -1})
    assert usd_per_hour(RunMeta.model_validate(run_json("b", broken))) == 0.0


def _priced_folder(path: Path, gpus: int, budgets: dict[str, Any] | None = None) -> Path:
    """A simulated run folder of the same requests, its replica on `gpus` GPUs at $2 an hour."""
    from scenarios.plan import build_plan
    from scenarios.records import write_records
    from scenarios.spec import parse_scenario
    from simulator.engine.core import engine_from_spec
    from simulator.replay.sim import simulate
    from surgecast.rundir import RunFolder
    from tests.conftest import run_json

    data = scenario_dict(
        traffic={"rate": 6, "duration_s": 20, "seed": 1},
        regressions={"cost_per_million_tokens": "rate regress < 10%"},
        cost={"gpu_hour_usd": 2.0, "gpus_per_replica": gpus, "budgets": budgets or {}},
        telemetry={"prometheus": False, "gpu": False},
    )
    scenario = parse_scenario(data)
    result = simulate(build_plan(scenario), engine_from_spec(scenario.reference_target))
    path.mkdir(parents=True)
    write_records(path / "requests.jsonl", result.records)
    meta = run_json(path.name, scenario.model_dump(mode="json"), source="simulated")
    RunFolder(path).write_meta(meta)
    return path


def test_the_gate_fails_a_candidate_costlier_per_token_with_99(tmp_path: Path) -> None:
    from tests.conftest import run_cli

    base = _priced_folder(tmp_path / "base", gpus=1)
    dear = _priced_folder(tmp_path / "dear", gpus=2)
    args = ["gate", "--baseline", str(base), "--out", str(tmp_path / "g")]
    failed = run_cli(*args, "--candidate", str(dear))
    assert failed.returncode == 99, failed.stdout[-2000:] + failed.stderr[-2000:]
    row = next(line for line in failed.stdout.splitlines() if "cost_per_million_tokens" in line)
    assert "**FAIL**" in row and "rate regress < 10%" in row and "+100.0%" in row, row
    junit = (tmp_path / "g" / "junit.xml").read_text()
    assert "cost_per_million_tokens rate regressed +100.0%" in junit
    again = _priced_folder(tmp_path / "again", gpus=1)
    passed = run_cli(*args, "--candidate", str(again))
    assert passed.returncode == 0, passed.stdout[-2000:] + passed.stderr[-2000:]


def test_the_reports_verdict_shows_a_cost_alert_first(tmp_path: Path) -> None:
    """The forecast in the folder costs $10,950 a month at x1 and $109,500 at x10: a $12,000
    budget puts a cost alert at the top of the verdict; a $200,000 one is met, said after."""
    from surgecast.contracts import write_forecast
    from surgecast.report import render
    from surgecast.rundir import RunFolder

    points = [_point(1.0, 3, MONTH / 3), _point(10.0, 30, MONTH / 3)]
    over = _priced_folder(tmp_path / "over", gpus=1, budgets={"monthly_usd": 12000})
    write_forecast(over / "forecast.json", points)
    html, md = render(RunFolder(over))
    verdict = Path(md).read_text().split("## Verdict\n\n", 1)[1].splitlines()
    assert verdict[0] == "- **Cost alert:** the forecast misses the scenario's cost budgets"
    assert verdict[1] == (
        "  - cost.budgets.monthly_usd '12000' crossed at x10: forecast monthly spend $109,500, "
        "limit <= $12,000; x1: $10,950, within it"
    )
    page = Path(html).read_text()
    assert page.index("Cost alert:") < page.index("Simulated run.")  # first in the verdict
    assert "FAIL: crossed at x10" in page  # the forecast section's budget table

    met = _priced_folder(tmp_path / "met", gpus=1, budgets={"monthly_usd": 200000})
    write_forecast(met / "forecast.json", points)
    _, md = render(RunFolder(met))
    text = Path(md).read_text()
    assert "Cost alert" not in text
    assert "**Cost budgets met:** 1 of 1 judged and held at every forecast scale up to x10" in text
