"""Every fault the reference target can inject, through a real `surgecast run`: the run
completes, and each request the target broke (its own log names the fault) is classified as
that fault, never counted a success."""

from __future__ import annotations

import itertools
import json
import os
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from loadgen.client import retry_after_seconds
from scenarios.records import read_records
from scenarios.spec import TargetFaults
from simulator.engine.core import EngineConfig, StepCost
from targets.reference_launch import ReferenceTargetProcess
from tests.conftest import run_cli, scenario_dict, served_log, write_scenario

ENGINE = EngineConfig(max_num_seqs=32, kv_cache_tokens=65536, cost=StepCost(0.005, 0.0, 0.0))
FAULTS = TargetFaults(
    reject_429=0.08,
    error_500=0.08,
    reset_stream=0.08,
    stall=0.08,
    stall_s=0.6,
    malformed_sse=0.08,
    missing_usage=0.08,
    slow_headers=0.08,
    slow_headers_s=0.6,
    oversized=0.08,
    oversized_bytes=300_000,
    seed=4,
)
# the client's classification of each fault: (status, error_kind); None: a success
EXPECTED: dict[str, tuple[str, str] | None] = {
    "reject_429": ("rejected", "http_429"),
    "error_500": ("error", "http_500"),
    "reset_stream": ("error", "stream_reset"),
    "malformed_sse": ("error", "sse_missing_data"),
    "oversized": ("error", "response_too_large"),
    "stall": None,
    "missing_usage": None,
    "slow_headers": None,
}


def _run(
    tmp: Path, url: str, env: dict[str, str] | None = None, duration_s: float = 5, **target: Any
) -> Any:
    data = scenario_dict(
        target={"api": "chat", "timeout_s": 20, **target},
        # these runs check how faults are classified, not timing: a shared machine's loop lag
        # over the default 5 ms voided one in CI (p99 5.3 ms)
        traffic={"rate": 40, "duration_s": duration_s, "seed": 2, "max_loop_lag_ms": 1000},
        workload={
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 60},
            "output_tokens": {"dist": "uniform", "low": 10, "high": 20},
        },
        slos={},
    )
    tmp.mkdir(exist_ok=True)
    out = tmp / "run"
    result = run_cli(
        "run",
        str(write_scenario(tmp / "s.yaml", data)),
        "--target",
        url,
        "--out",
        str(out),
        "--quiet",
        env=env,
    )
    return result, out


def test_each_injected_fault_is_classified_as_itself(tmp_path: Path) -> None:
    with ReferenceTargetProcess(ENGINE, faults=FAULTS, debug=True) as url:
        result, out = _run(tmp_path, url, max_response_bytes=100_000)
        served = served_log(url)
    assert result.returncode in (0, 99), result.stderr[-3000:]  # valid: the faults are the target's
    assert "Traceback" not in result.stderr
    records = read_records(out / "requests.jsonl")
    assert len(records) == len(served) >= 150
    faults = Counter(s["fault"] for s in served)
    assert set(EXPECTED) <= set(faults)  # every fault class drawn at least once

    by_id = {r.response_id: r for r in records if r.response_id}
    for s in served:
        if s["fault"] in ("reject_429", "error_500") or s["id"] not in by_id:
            continue
        rec = by_id[s["id"]]
        expected = EXPECTED.get(s["fault"] or "")
        if expected is None:
            assert (rec.status, rec.error_kind) == ("ok", None), (s["fault"], rec)
        else:
            assert (rec.status, rec.error_kind) == expected, (s["fault"], rec)
        if s["fault"] == "stall":
            assert rec.ttft is not None and rec.ttft >= 0.6
        if s["fault"] == "slow_headers":
            assert rec.first_byte is not None and rec.first_byte - rec.start >= 0.6
        if s["fault"] == "missing_usage":
            assert rec.token_source == "chunks" and rec.output_tokens == s["output_tokens"]
        if s["fault"] == "oversized":  # counted up to the cap, never kept
            assert rec.response_bytes is not None and rec.response_bytes > 100_000
            assert "xxxx" not in rec.to_json()
    # the HTTP errors carry no response id: they are matched by count
    kinds = Counter(r.error_kind for r in records)
    assert kinds["http_429"] == faults["reject_429"] and kinds["http_500"] == faults["error_500"]
    # every broken stream is one of its own kind: none counted a success
    for fault in ("reset_stream", "malformed_sse", "oversized"):
        assert kinds[EXPECTED[fault][1]] == faults[fault]  # type: ignore[index]
    assert sum(r.status == "ok" for r in records) == sum(
        faults[f] for f in (None, "stall", "missing_usage", "slow_headers")
    )
    summary = (out / "summary.md").read_text()
    for kind in ("stream_reset", "sse_missing_data", "response_too_large", "http_500"):
        assert kind in summary


def test_a_target_that_dies_mid_run_makes_the_run_invalid(tmp_path: Path) -> None:
    with ReferenceTargetProcess(ENGINE, faults=TargetFaults(die_after=60)) as url:
        result, out = _run(tmp_path, url)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "run invalid: the target stopped answering" in result.stderr
    meta = json.loads((out / "run.json").read_text())
    assert "the target stopped answering" in " ".join(meta["validity"]["reasons"])
    kinds = Counter(r.error_kind for r in read_records(out / "requests.jsonl"))
    assert kinds["connection_refused"] > 50  # the rest of the plan found nobody


def test_an_api_key_the_target_refuses_stops_the_run_before_any_load(tmp_path: Path) -> None:
    """A wrong key: refused at the preflight with exit 3, nothing sent, the key in no output;
    the right one, to the same target: served (a one-second run says so)."""
    planted = "sk-planted-9f8e7d6c5b4a"
    env = {**os.environ, "TEST_TARGET_KEY": planted}
    with ReferenceTargetProcess(ENGINE, api_key="sk-the-right-one", debug=True) as url:
        result, out = _run(tmp_path, url, env=env, api_key_env="TEST_TARGET_KEY")
        sent = served_log(url, api_key="sk-the-right-one")
        right = {**env, "TEST_TARGET_KEY": "sk-the-right-one"}
        served, right_out = _run(
            tmp_path / "right", url, env=right, duration_s=1, api_key_env="TEST_TARGET_KEY"
        )
    assert result.returncode == 3, result.stderr[-3000:]
    assert "refused the request with the API key given (HTTP 401" in result.stderr
    assert "target.api_key_env" in result.stderr
    assert not sent
    outputs = [result.stdout, result.stderr] + [
        p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()
    ]
    assert not any(planted in text for text in outputs)
    assert served.returncode == 0, served.stderr[-3000:]
    # its /metrics wants the key too, and the run's telemetry sent it
    errors = json.loads((right_out / "run.json").read_text())["telemetry_errors"]
    assert not [e for e in errors if "metrics" in e], errors
    assert '"source":"prometheus","metrics"' in (right_out / "telemetry.jsonl").read_text()


def test_the_key_guards_every_endpoint_but_health_whatever_the_schemes_case() -> None:
    """Issue 26, finding 14: /metrics answered without the key, and `bearer KEY` was refused."""
    key = "sk-the-right-one"
    with ReferenceTargetProcess(ENGINE, api_key=key, debug=True) as url:
        root = url.removesuffix("/v1")

        def status(path: str, authorization: str | None = None) -> int:
            request = urllib.request.Request(root + path)
            if authorization:
                request.add_header("Authorization", authorization)
            try:
                with urllib.request.urlopen(request, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return e.code

        assert status("/health") == 200
        for path in ("/metrics", "/v1/models", "/debug/requests"):
            assert status(path) == 401, path
            assert status(path, "Bearer sk-wrong") == 401, path
            for scheme in ("Bearer", "bearer", "BEARER"):
                assert status(path, f"{scheme} {key}") == 200, (path, scheme)


def test_retry_after_in_both_forms_is_seconds_from_now() -> None:
    now = 784111777.0  # RFC 9110's example date, Sun, 06 Nov 1994 08:49:37 GMT
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", now - 5) == 5.0
    assert retry_after_seconds("Sunday, 06-Nov-94 08:49:37 GMT", now - 5) == 5.0  # RFC 850
    assert retry_after_seconds("Sun Nov  6 08:49:37 1994", now - 5) == 5.0  # asctime
    assert retry_after_seconds("Sun, 06 Nov 1994 08:49:37 GMT", now + 30) == 0.0  # past: now
    assert retry_after_seconds("-3", now) == 0.0
    for bad in ("soon", "", "nan", "Sun, 99 Nov 1994 08:49:37 GMT"):
        assert retry_after_seconds(bad, now) is None, bad


def test_a_retry_after_http_date_is_waited_out(tmp_path: Path) -> None:
    """The target sends Retry-After as an HTTP-date at least 1 s ahead (whole seconds, rounded
    up); the client's 10 ms backoff alone would retry at once, so each retry waiting 1 s after
    the 429 shows the date was read and honoured."""
    faults = TargetFaults(reject_429=0.4, retry_after_s=1.0, retry_after_date=True, seed=3)
    data = scenario_dict(
        traffic={"rate": 4, "duration_s": 2, "seed": 5},
        session={"retry": {"max_retries": 4, "backoff_s": 0.01, "jitter": 0.0}},
        slos={},
    )
    out = tmp_path / "run"
    with ReferenceTargetProcess(ENGINE, faults=faults, debug=True) as url:
        path = write_scenario(tmp_path / "s.yaml", data)
        result = run_cli("run", str(path), "--target", url, "--out", str(out), "-q")
        served = served_log(url)
    assert result.returncode in (0, 99), result.stderr[-3000:]
    assert any(s["status"] == "http_429" for s in served)
    tries: dict[str, list[Any]] = {}
    for r in read_records(out / "requests.jsonl"):
        tries.setdefault(r.id, []).append(r)
    gaps = []
    for attempts in tries.values():
        attempts.sort(key=lambda r: r.attempt)
        for prev, nxt in itertools.pairwise(attempts):
            assert prev.http_status == 429 and prev.retried and prev.end is not None
            gaps.append(nxt.start - prev.end)
    assert len(gaps) >= 2
    assert min(gaps) >= 1.0 - 0.01 and max(gaps) < 2.5, gaps  # at most a second's rounding more
