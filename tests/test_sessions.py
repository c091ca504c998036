"""Sessions, retries and abandonment in real Locust runs against the reference target."""

from __future__ import annotations

import itertools
import json
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from scenarios.plan import RequestSpec, build_plan
from scenarios.records import RequestRecord, read_records
from scenarios.spec import TargetFaults, load_scenario
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import FAST_ENGINE, run_cli, scenario_dict, write_scenario

THINK_S = 0.3
PLAN: dict[str, RequestSpec] = {}  # the run's plan by id, set by the fixture
RETRY_AFTER_S = 0.25


def _session_scenario() -> dict:
    data = scenario_dict(
        traffic={"rate": 5, "duration_s": 4, "seed": 3},
        session={
            "turns": {"dist": "constant", "value": 3},
            "think_time": {"dist": "constant", "value": THINK_S},
            "regenerate": 0.3,
            "retry": {"max_retries": 6, "backoff_s": 0.05, "jitter": 0.2},
        },
        personas=[
            {"name": "chatty", "weight": 3},
            {
                # retries, but gives up before a Retry-After runs out; weighted so that some
                # of its ~15 requests meet a 429 whatever order they reach the target in
                "name": "hasty",
                "weight": 3,
                "session": {
                    "patience": {"dist": "constant", "value": 0.2},
                    "retry": {"max_retries": 3, "backoff_s": 0.05},
                },
            },
            {
                "name": "impatient",
                "weight": 2,
                "session": {
                    "turns": {"dist": "constant", "value": 2},
                    "patience": {"dist": "constant", "value": 0.001},
                },
            },
        ],
        slos={"ttft": "p(95) < 5000"},
    )
    data["workload"]["output_tokens"] = {"dist": "uniform", "low": 5, "high": 15}
    return data


@pytest.fixture(scope="module")
def session_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], str]:
    """A session run against a target that rejects 30% of requests with 429 + Retry-After:
    (run folder, the target's own request log, stdout)."""
    tmp = tmp_path_factory.mktemp("sessions")
    path = write_scenario(tmp / "s.yaml", _session_scenario())
    global PLAN
    PLAN = {s.id: s for s in build_plan(load_scenario(path))}
    faults = TargetFaults(reject_429=0.3, retry_after_s=RETRY_AFTER_S, seed=5)
    with ReferenceTargetProcess(FAST_ENGINE, faults=faults, debug=True) as url:
        out = tmp / "run"
        result = run_cli("run", str(path), "--target", url, "--out", str(out), "-q")
        assert result.returncode in (0, 99), result.stderr[-2000:]
        with urllib.request.urlopen(url.removesuffix("/v1") + "/debug/requests") as r:
            served = json.load(r)
    return out, served, result.stdout


def _last_attempts(records: list[RequestRecord]) -> dict[str, RequestRecord]:
    return {r.id: r for r in sorted(records, key=lambda r: r.attempt)}


def _first_attempts(records: list[RequestRecord]) -> dict[str, RequestRecord]:
    return {r.id: r for r in records if r.attempt == 0}


def test_follow_ups_wait_think_time_after_the_answer(session_run: tuple) -> None:
    out, _, _ = session_run
    records = read_records(out / "requests.jsonl")
    last, first = _last_attempts(records), _first_attempts(records)
    gaps = []
    for rid, rec in first.items():
        spec = PLAN[rid]
        if spec.after is None:
            continue
        before = last[spec.after]
        assert before.status == "ok" and before.end is not None
        gaps.append(rec.start - before.end)
        assert rec.intended_start == pytest.approx(before.end + THINK_S, abs=1e-6)
    assert len(gaps) >= 10
    assert min(gaps) >= THINK_S - 0.002
    assert max(gaps) < THINK_S + 0.05  # sent on time, not late


def test_history_grows_by_the_previous_answer(session_run: tuple) -> None:
    """The server counts each follow-up's prompt: the previous prompt and answer, then the new
    message; a regenerate resends the previous prompt as it was."""
    out, _, _ = session_run
    last = _last_attempts(read_records(out / "requests.jsonl"))
    checked = regenerated = 0
    for rid, rec in last.items():
        spec = PLAN[rid]
        if spec.after is None or rec.status != "ok":
            continue
        before = last[spec.after]
        assert rec.prompt_tokens and before.prompt_tokens and before.output_tokens
        assert rec.regenerate == spec.regenerate  # the record says which answers were redone
        if spec.regenerate:
            assert rec.prompt_tokens == before.prompt_tokens
            regenerated += 1
            continue
        new = rec.prompt_tokens - before.prompt_tokens - before.output_tokens
        assert new == pytest.approx(spec.message_tokens, rel=0.15, abs=3)
        checked += 1
    assert checked >= 10 and regenerated >= 2


def test_retries_honour_retry_after_and_match_the_targets_log(session_run: tuple) -> None:
    out, served, _ = session_run
    records = read_records(out / "requests.jsonl")
    rejected = [r for r in records if r.http_status == 429]
    # chatty users retry; impatient ones have a session block of their own, without retries;
    # hasty ones would retry, but their patience (counted from the first attempt's intended
    # start) runs out before the Retry-After does
    assert len(rejected) >= 5
    assert all(r.retried == (r.persona == "chatty") for r in rejected)
    assert any(r.persona == "hasty" for r in rejected)
    assert all(r.attempt == 0 for r in records if r.persona == "hasty")
    probes = json.loads((out / "run.json").read_text())["sizing"]  # sent before the run
    by_status = Counter(s["status"] for s in served)
    # an impatient user may give up (1 ms patience) before reading the 429 the server sent
    gave_up = sum(r.error_kind == "abandoned" for r in records)
    assert len(rejected) <= by_status["http_429"] - probes["rejected"] <= len(rejected) + gave_up
    assert by_status["ok"] == sum(r.status == "ok" for r in records) + probes["learned"]
    attempts: dict[str, list[RequestRecord]] = {}
    for r in records:
        attempts.setdefault(r.id, []).append(r)
    for tries in attempts.values():
        tries.sort(key=lambda r: r.attempt)
        assert [r.attempt for r in tries] == list(range(len(tries)))
        for prev, nxt in itertools.pairwise(tries):
            assert prev.end is not None
            assert nxt.start - prev.end >= RETRY_AFTER_S - 0.002  # Retry-After beats the backoff
            assert nxt.intended_start == tries[0].intended_start  # the user's wait counts


def test_impatient_users_abandon_and_their_sessions_end(session_run: tuple) -> None:
    out, _, stdout = session_run
    records = read_records(out / "requests.jsonl")
    impatient = [r for r in records if r.persona == "impatient"]
    assert impatient and all(r.error_kind in ("abandoned", "http_429") for r in impatient)
    assert sum(r.error_kind == "abandoned" for r in impatient) >= 2
    assert all(PLAN[r.id].after is None for r in impatient)  # the second turn never went out
    assert "impatient" in stdout and "chatty" in stdout  # the per-persona table


def test_served_prompt_tokens_land_within_5_percent_of_the_plan(session_run: tuple) -> None:
    """Sized by a characters-per-token ratio learned from usage: the totals agree within 5%;
    single prompts scatter by their words' lengths (median within 10% on 20-200 tokens)."""
    out, _, stdout = session_run
    records = read_records(out / "requests.jsonl")
    firsts = [r for r in records if r.turn == 0 and r.status == "ok" and r.prompt_tokens]
    planned = sum(r.planned_prompt_tokens or 0 for r in firsts)
    served = sum(r.prompt_tokens or 0 for r in firsts)
    assert len(firsts) >= 8
    assert served == pytest.approx(planned, rel=0.05)
    errors = sorted(abs(r.prompt_tokens / r.planned_prompt_tokens - 1) for r in firsts)  # type: ignore[operator]
    assert errors[len(errors) // 2] < 0.10
    assert "prompt tokens:" in stdout


def test_the_plan_is_what_the_run_sent(session_run: tuple, tmp_path: Path) -> None:
    """Every planned turn of a patient session was sent exactly once (retries aside)."""
    out, _, _ = session_run
    plan = build_plan(load_scenario(write_scenario(tmp_path / "s.yaml", _session_scenario())))
    records = read_records(out / "requests.jsonl")
    sent = {r.id for r in records}
    chatty = [s for s in plan if s.persona == "chatty"]
    assert {s.id for s in chatty} <= sent
    assert len({(r.id, r.attempt) for r in records}) == len(records)
