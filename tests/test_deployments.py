"""The deployment search against brute force: it chooses what simulating every option would, more
options never make the answer dearer, an option that does not fit is never chosen and says why,
and the measured deployment carried to itself is the plain forecast."""

from __future__ import annotations

import contextlib
import io
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from scenarios.deployment_spec import Deployment, DeploymentOptions
from scenarios.plan import RequestSpec
from simulator.deploy.catalog import load_catalog
from simulator.deploy.memory import engine_config, memory_plan
from simulator.forecast import search as forecast_search
from simulator.forecast.deployments import Choice, DeploymentSearch, carried, options
from simulator.forecast.search import HOURS_PER_MONTH, ForecastConfig, Forecaster
from simulator.forecast.seeds import PlanJob, seed_plan
from surgecast.choice_report import pareto_front
from surgecast.cli.main import main
from surgecast.contracts.model import write_calibration
from surgecast.tables import as_markdown, deployment_blocks
from tests.conftest import ROOT
from tests.test_forecast import known, scenario

CATALOG = load_catalog()
MEASURED = Deployment(model="Llama-3.1-8B", gpu="L4", max_num_seqs=8)
CONFIG = ForecastConfig(seeds=2, duration_s=20, workers=1)
SCALES = [1.0, 6.0]


def search(exhaustive: bool = False, **lists: Any) -> list[Choice]:
    spec = DeploymentOptions(measured=MEASURED, **lists)
    found = DeploymentSearch(
        scenario(), known(), MEASURED, options(spec.combinations(), CATALOG), CATALOG, CONFIG
    )
    return found.run(SCALES, exhaustive=exhaustive)


def _best(c: Choice) -> tuple[float, str] | None:
    return (c.best.cost_per_month_usd or 0.0, c.best.option.label) if c.best else None


OPTIONS: dict[str, Any] = {
    "gpus": ["L4", "A10", "L40S", "H100"],
    "weights": ["bf16", "int4"],
    "tensor_parallel": [1, 2],
}


def test_the_choice_is_brute_forces_and_the_cheapest_that_passed() -> None:
    pruned, brute = search(**OPTIONS), search(exhaustive=True, **OPTIONS)
    for p, b in zip(pruned, brute, strict=True):
        assert _best(p) == _best(b) is not None
        passed = [
            (o.cost_per_month_usd, o.option.label) for o in b.outcomes if o.cost_per_month_usd
        ]
        assert _best(b) == min(passed)  # fmt: skip
        simulated = sum(o.point is not None for o in p.outcomes)
        assert simulated < sum(o.point is not None for o in b.outcomes)  # the bound pruned some
        for o in p.outcomes:  # a pruned option's bound really is dearer than the choice
            if o.point is None and o.option.memory.fits:
                assert (o.floor_per_month_usd, o.option.label) > _best(p)  # type: ignore[operator]


def test_more_options_never_give_a_dearer_answer() -> None:
    few = search(gpus=["L4", "A10"])
    more = search(gpus=["L4", "A10", "L40S", "H100"], weights=["bf16", "int4"])
    for f, m in zip(few, more, strict=True):
        assert f.best is not None and m.best is not None
        assert m.best.cost_per_month_usd <= f.best.cost_per_month_usd  # type: ignore[operator]


def test_an_option_that_does_not_fit_is_never_chosen_and_says_why() -> None:
    choices = search(models=["Llama-3.1-8B", "Llama-3.1-70B"], gpus=["L4", "A100"])
    text = as_markdown(deployment_blocks(choices))
    for c in choices:
        assert c.best is not None and c.best.option.memory.fits
        unfit = [o for o in c.outcomes if not o.option.memory.fits]
        assert {o.option.label for o in unfit} == {
            "Llama-3.1-70B x L4 x w:bf16 x kv:bf16 x tp1",
            "Llama-3.1-70B x A100 x w:bf16 x kv:bf16 x tp1",
        }
        assert all(o.point is None and o.why.startswith("does not fit") for o in unfit)
    assert "does not fit: weights 131.4" in text and "chosen" in text


def test_the_measured_deployment_carried_to_itself_is_the_plain_forecast() -> None:
    cost = known().engine.cost
    same = carried(MEASURED, MEASURED, CATALOG)(cost)
    for shape in ((1, 0, 0), (8, 0, 4000), (3, 512, 900)):
        assert same.duration(*shape) == pytest.approx(cost.duration(*shape), rel=1e-12)
    choice = search()  # no lists: the measured deployment alone
    plan = memory_plan(MEASURED, CATALOG)
    price = CATALOG.gpu("L4").price_per_hour_usd
    sc = scenario()
    plain = Forecaster(
        sc.model_copy(update={"cost": sc.cost.model_copy(update={"gpu_hour_usd": price})}),
        replace(known(), engine=engine_config(plan, known().engine)),
        CONFIG,
    ).run(SCALES)
    for c, p in zip(choice, plain, strict=True):
        assert c.best is not None and p.best is not None and c.best.point is not None
        assert c.best.point.best is not None
        assert c.best.point.best.replicas == p.best.replicas
        assert c.best.cost_per_month_usd == p.best.replicas * price * HOURS_PER_MONTH


def test_forecast_on_the_command_line_prints_the_choice_per_scale(tmp_path: Path) -> None:
    """The catalog's launch-day scenario, which names deployments, through `surgecast forecast`
    with a calibration file: the table, the JSON and the page say the same choice."""
    calibration = tmp_path / "calibration.json"
    write_calibration(calibration, known())
    scenario_file = ROOT / "scenarios" / "launch-day.yaml"
    page, data = tmp_path / "choice.html", tmp_path / "choice.json"
    argv = ["forecast", str(scenario_file), "--calibration", str(calibration), "--scales", "2"]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([*argv, "--html", str(page), "--json", str(data)])
    text = out.getvalue()
    assert code == 0, err.getvalue()
    assert "deployments: 42 options" in err.getvalue()
    assert text.count("| chosen ") == 1 and "x2 (" in text and "replicas, $" in text
    (scale,) = json.loads(data.read_text(encoding="utf-8"))
    (chosen,) = [o for o in scale["options"] if o["chosen"]]
    assert (
        f"x2 ({scale['rate']:.3g} req/s): {chosen['label']}, {chosen['replicas']:,} replicas"
        in text
    )
    assert len(scale["options"]) == 42 and all(
        o["why_not"] for o in scale["options"] if not o["chosen"]
    )
    html = page.read_text(encoding="utf-8")
    assert chosen["label"] in html and html.count("<img") == 1 and "Pareto front" in html


def test_the_pareto_front_keeps_what_nothing_beats_on_both() -> None:
    points = [(100.0, 900.0), (120.0, 950.0), (150.0, 400.0), (150.0, 300.0), (400.0, 350.0)]
    assert pareto_front(points) == [(100.0, 900.0), (150.0, 300.0)]


def test_every_option_simulates_the_same_kept_traffic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The options differ in their GPUs' price (the scenario's cost section), not in the
    requests sent: brute force over them builds each seed's plan once a scale, not once an
    option (kept per option, an exhaustive search would hold options x seeds plans)."""
    built: Counter[tuple[int, float]] = Counter()

    def counting(job: PlanJob) -> list[RequestSpec]:
        built[(job.seed, job.rate_scale)] += 1
        return seed_plan(job)

    monkeypatch.setattr(forecast_search, "seed_plan", counting)
    choices = search(exhaustive=True, **OPTIONS)
    simulated = {o.option.label for c in choices for o in c.outcomes if o.point is not None}
    assert len(simulated) > 4
    assert len(built) == 2 * len(SCALES) and set(built.values()) == {1}
