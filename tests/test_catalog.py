"""Every catalog scenario plans, and runs for a few seconds against the reference target."""

from __future__ import annotations

from pathlib import Path

import pytest

from scenarios import CATALOG
from scenarios.plan import build_plan
from scenarios.records import read_records
from scenarios.spec import load_scenario
from tests.conftest import ROOT, run_cli

SHARED_DATA = ROOT.parent / "shared" / "data"
SCENARIOS = sorted(p.name for p in CATALOG.glob("*.yaml"))


def _needs_shared_data(path: Path) -> bool:
    return "shared/data" in path.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", SCENARIOS)
def test_catalog_scenario_runs(name: str, tmp_path: Path) -> None:
    path = CATALOG / name
    if _needs_shared_data(path) and not SHARED_DATA.is_dir():
        pytest.skip(f"{name} reads corpora from {SHARED_DATA}, which is absent")
    scenario = load_scenario(path)
    assert build_plan(scenario), "the full plan is empty"
    short = next(d for d in (5, 10, 20) if len(build_plan(scenario, duration_s=d)) >= 3)
    out = tmp_path / "run"
    result = run_cli(
        "run", str(path), "--duration", str(short), "--out", str(out), "-q", "--no-report"
    )
    assert result.returncode in (0, 99), result.stderr[-2000:]  # 99: an SLO missed, run valid
    records = read_records(out / "requests.jsonl")
    assert records and any(r.status == "ok" for r in records)
    personas = {p.name for p in scenario.mix()}
    assert {r.persona for r in records} <= personas
    if len(personas) > 1:
        assert "| persona" in result.stdout  # the per-persona breakdown
