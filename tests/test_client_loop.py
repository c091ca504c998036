"""One client loop, two clocks (`scenarios.users`): the same plan of sessions sent live to the
reference target and replayed by the simulator of the very same engine, with the target's
injected 429s and 500s drawn alike in both, ends every request the same way (its attempts and
their outcomes: retries, follow-ups sent or not, abandonments) at the same times, within the
target's timing noise.

The plan is built so that every decision has a wide margin over that noise: sessions start 2.5 s
apart and never overlap (faults are drawn in the order requests arrive), prompts are either 100
or 5,000 tokens (a first token after about 30 ms or 1 s, against a patience of 0.4 s), and
Retry-After (0.15 s) lets two retries fit in the patience, never a third.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from scenarios.plan import build_plan
from scenarios.records import RequestRecord, read_records
from scenarios.spec import load_scenario
from scenarios.users import horizon
from simulator.engine.core import engine_from_spec
from simulator.replay.sim import simulate
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import LENIENT, ROOT, scenario_dict, write_scenario
from tests.live_plan import with_text

SHORT, LONG = 100, 5000  # prompt tokens: a first token after ~30 ms, or ~1 s
PATIENCE_S = 0.4
# what the live client adds and the target's own jitter (loop lag, HTTP), per attempt; the
# differences accumulate along a session's attempts
NOISE_S = 0.015


def _scenario(tmp: Path) -> dict[str, object]:
    lengths = tmp / "lengths.csv"
    rows = [(LONG if i % 5 == 0 else SHORT, 8 + i % 12) for i in range(50)]
    lengths.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        + "".join(f"2023-11-16 18:15:{i:02d}.000,{p},{o}\n" for i, (p, o) in enumerate(rows))
    )
    return scenario_dict(
        target={"api": "chat", "timeout_s": 20},
        reference_target={
            "max_num_seqs": 8,
            "kv_cache_tokens": 65536,
            "cold_start_s": 0.0,
            "step": {"base_ms": 10, "per_decode_seq_ms": 0.5, "per_prefill_token_ms": 0.2},
            "faults": {"reject_429": 0.25, "error_500": 0.1, "retry_after_s": 0.15, "seed": 11},
        },
        traffic={
            "arrival": {"type": "constant-arrival-rate", "rate": 0.4},
            "duration_s": 20,
            "seed": 3,
            **LENIENT,
        },
        workload={"lengths": {"path": str(lengths), "format": "azure-llm"}},
        session={
            "turns": {"dist": "constant", "value": 3},
            "think_time": {"dist": "constant", "value": 0.15},
            "patience": {"dist": "constant", "value": PATIENCE_S},
            "retry": {"max_retries": 3, "backoff_s": 0.05, "jitter": 0.2},
        },
        slos={},
    )


Both = tuple[list[RequestRecord], list[RequestRecord], float]


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory) -> Both:
    """(live records, simulated records, the plan's horizon) of the one plan."""
    tmp = tmp_path_factory.mktemp("loop")
    path = write_scenario(tmp / "s.yaml", _scenario(tmp))
    scenario = load_scenario(path)
    spec = scenario.reference_target
    engine = engine_from_spec(spec)
    records = tmp / "live.jsonl"
    with ReferenceTargetProcess(engine, faults=spec.faults) as url:
        subprocess.run(
            [sys.executable, "-m", "tests.live_plan", str(path), url, str(records)],
            cwd=ROOT,
            check=True,
            timeout=120,
        )
    plan = with_text(build_plan(scenario))
    sim = simulate(plan, engine, timeout_s=scenario.target.timeout_s, faults=spec.faults)
    return read_records(records), sim.records, horizon(plan, scenario.target.timeout_s)


def _attempts(records: list[RequestRecord]) -> dict[str, list[RequestRecord]]:
    out: dict[str, list[RequestRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.id, r.attempt)):
        out[r.id].append(r)
    return out


def _outcome(r: RequestRecord) -> tuple[object, ...]:
    failed_with = r.http_status if r.status in ("error", "rejected") else None
    return (r.attempt, r.status, failed_with, r.error_kind == "abandoned", r.retried)


def test_every_request_ends_the_same_way_on_both_clocks(both: Both) -> None:
    live, sim, _ = both
    live_by, sim_by = _attempts(live), _attempts(sim)
    assert live_by.keys() == sim_by.keys()  # the same follow-ups sent, the same ones skipped
    for rid in live_by:
        assert [_outcome(r) for r in live_by[rid]] == [_outcome(r) for r in sim_by[rid]], rid
    every = [r for rs in live_by.values() for r in rs]
    # the plan exercised what it is for: retries, abandonments, sessions cut short, follow-ups
    assert sum(r.retried for r in every) >= 3
    assert sum(r.error_kind == "abandoned" for r in every) >= 3
    assert sum(r.http_status == 500 for r in every) >= 1
    assert any(r.turn == 2 and r.status == "ok" for r in every)


def test_times_agree_within_the_targets_noise(both: Both) -> None:
    live, sim, _ = both
    live_by, sim_by = _attempts(live), _attempts(sim)
    for rid, attempts in live_by.items():
        for n, (a, b) in enumerate(zip(attempts, sim_by[rid], strict=True)):
            slack = NOISE_S * (2 + n + 3 * b.turn)  # the drift a session's chain can gather
            assert a.start == pytest.approx(b.start, abs=slack), (rid, n)
            if a.ttft is not None and b.ttft is not None:
                assert a.ttft == pytest.approx(b.ttft, abs=2 * NOISE_S), (rid, n)
            if a.status == "ok":
                assert a.e2e == pytest.approx(b.e2e, abs=3 * NOISE_S, rel=0.05), (rid, n)
            if a.error_kind == "abandoned":  # both gave up at the same patience
                assert (a.end or 0) - a.intended_start == pytest.approx(PATIENCE_S, abs=0.05)
                assert (b.end or 0) - b.intended_start == pytest.approx(PATIENCE_S, abs=1e-6)


def test_every_request_ends_within_the_one_horizon(both: Both) -> None:
    live, sim, end = both
    assert math.isfinite(end)
    for records in (live, sim):
        assert max(r.end or r.start for r in records) < end
