"""Shared fixtures: real reference targets on loopback and a CLI runner (subprocesses)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from simulator.engine.core import EngineConfig, StepCost
from targets.reference_launch import ReferenceTargetProcess
from tests.corpus_sets import SETS, CorpusSet, catalog_corpora

if TYPE_CHECKING:
    from surgecast.live_run import RunOutcome

ROOT = Path(__file__).resolve().parents[1]

# A fast engine for client tests: 10 ms steps, so chunk gaps are well above timing noise.
FAST_ENGINE = EngineConfig(
    max_num_seqs=8, kv_cache_tokens=4096, cold_start_s=0.2, cost=StepCost(0.010, 0.0005, 0.00002)
)


@pytest.fixture(scope="session")
def target_url() -> Iterator[str]:
    with ReferenceTargetProcess(FAST_ENGINE, debug=True) as url:
        yield url


@pytest.fixture(params=SETS)
def corpora(request: pytest.FixtureRequest) -> CorpusSet:
    """The catalog's corpora: the project's own sets, then the public ones under ../shared/data
    (skipped, with the folder named, where absent)."""
    return catalog_corpora(request.param)


def served_log(base_url: str) -> list[dict[str, Any]]:
    """The reference target's own timing records (`debug=True`) of the requests it served, in
    order; not the 1-token preflight and sizing probes."""
    url = base_url.removesuffix("/v1") + "/debug/requests"
    with urllib.request.urlopen(url, timeout=5) as r:
        return [d for d in json.load(r) if d["max_tokens"] != 1]


def served_requests(base_url: str) -> dict[str, dict[str, Any]]:
    """`served_log` by response id (a request the target refused may share its id)."""
    return {d["id"]: d for d in served_log(base_url)}


# traffic settings for a test whose subject is not the generator's timing: a stall of this noisy
# machine must not make its run invalid
LENIENT = {"max_lateness_ms": 5000, "max_loop_lag_ms": 1000}


def scenario_dict(**overrides: Any) -> dict[str, Any]:
    """A small valid scenario; `overrides` replace top-level sections."""
    base: dict[str, Any] = {
        "name": "test",
        "target": {"api": "chat", "timeout_s": 20},
        "reference_target": {
            "max_num_seqs": 8,
            "kv_cache_tokens": 16384,
            "cold_start_s": 0.2,
            "step": {"base_ms": 10, "per_decode_seq_ms": 0.8, "per_prefill_token_ms": 0.05},
        },
        "traffic": {"rate": 5, "duration_s": 3, "seed": 1},
        "workload": {
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 200},
            "output_tokens": {"dist": "uniform", "low": 10, "high": 40},
        },
        "slos": {"ttft": "p(95) < 2000", "e2e": ["p(95) < 10000"]},
        "cost": {"gpu_hour_usd": 2.0},
        "forecast": {"duration_s": 30},
    }
    base.update(overrides)
    return base


def run_json(run_id: str, scenario: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A finished, valid measured run's run.json (surgecast.run/1); `fields` replace its own."""
    return {
        "schema": "surgecast.run/1",
        "run_id": run_id,
        "source": "measured",
        "status": "finished",
        "scenario_file": None,
        "scenario": scenario or scenario_dict(),
        "seed": 1,
        "planned_requests": 0,
        "duration_s": 3.0,
        "target": {"kind": "reference"},
        "versions": {},
        "machine": {"platform": "test", "cpus": 1, "python": sys.executable},
        "started_at": "2026-01-01T00:00:00+00:00",
        "validity": {"valid": True, "reasons": []},
        **fields,
    }


def write_scenario(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_cli(
    *args: str, timeout: float = 240, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "surgecast", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=cwd or ROOT,
        check=False,
    )


def cli_help(*command: str) -> str:
    """What `surgecast COMMAND --help` prints, from the CLI's own parser in this process (a
    subprocess would spend a second importing for it); fails unless it exits 0."""
    from surgecast.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        main([*command, "--help"])
    assert done.value.code == 0, out.getvalue()
    return out.getvalue()


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One `surgecast pipeline` run on a short scenario: (run folder, stdout)."""
    tmp = tmp_path_factory.mktemp("pipeline")
    data = scenario_dict(
        traffic={"rate": 6, "duration_s": 8, "seed": 4},
        forecast={"scales": [10], "seeds": 3, "duration_s": 30},
    )
    path = write_scenario(tmp / "s.yaml", data)
    out = tmp / "run"
    result = run_cli("pipeline", str(path), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def engine_level(base_url: str, traffic: dict[str, Any], out: Path, stairs: int = 0) -> RunOutcome:
    """One load level against a real engine: short chat requests with ignore_eos, generous
    lateness and SLOs (a 2-core machine); `stairs`: a staircase of that many requests instead."""
    from scenarios.spec import parse_scenario
    from surgecast.live_run import run_load  # heavy: only for the engine tests
    from surgecast.sweep import staircase
    from targets.launcher import ExternalTarget

    data = scenario_dict(
        target={"api": "chat", "timeout_s": 120, "extra_body": {"ignore_eos": True}},
        traffic={"duration_s": 20, **LENIENT, **traffic},
        slos={"ttft": "p(95) < 120000"},
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 200},
            "output_tokens": {"dist": "uniform", "low": 16, "high": 48},
        },
    )
    scenario = parse_scenario(data)
    plan = staircase(scenario, stairs) if stairs else None
    return run_load(scenario, "s.yaml", ExternalTarget(base_url), out=out, plan=plan)
