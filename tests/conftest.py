"""Shared fixtures: real reference targets on loopback and a CLI runner (subprocesses)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

# The two tiers. `make test` runs every test (CI's command); `make check` runs `-m "not slow"`,
# the inner loop (ruff, mypy and these in at most 3 minutes on a 2-core machine). A test is slow
# when it takes 3 s or more here, or needs a fixture that does (below); the fast tier keeps two
# short live runs against the reference target on purpose (test_drive.py, and
# test_bad_targets.py's run against a target that rejects everything), so it still sends traffic.
SLOW_FIXTURES = {
    "pipeline_run": "a whole `surgecast pipeline` run (about 17 s)",
    "llama_files": "the llama-server binary (built by `make llama-server`, minutes)",
}
SLOW = {  # test files, or a test function (every parameter of it) as FILE::NAME
    "test_cluster.py::test_an_unreachable_scheduler_is_refused_with_what_to_do",
    "test_cluster.py::test_a_cluster_by_address_gives_the_local_forecast",
    "test_cluster.py::test_workers_running_other_sources_are_refused",
    "test_cluster.py::test_a_fleet_too_large_for_a_workers_memory_is_refused_before_it_starts",
    "test_signal_phases.py::test_a_pipeline_stopped_in_its_forecast",
    "test_backtest.py::test_calibrating_on_a_run_near_saturation_says_so",
    "test_bad_targets.py::test_a_credential_in_a_target_url_is_refused_never_echoed",
    "test_bad_targets.py::test_a_target_quoting_the_prompt_leaves_it_nowhere",
    "test_bad_targets.py::test_bad_folders_exit_2",
    "test_bad_targets.py::test_usage_that_ignores_the_prompt_leaves_sizing_at_its_estimate",
    "test_benchmarks.py",
    "test_calibrate.py::test_a_million_token_stream_is_thinned_and_recovers_the_engine",
    "test_catalog.py::test_catalog_scenario_runs_from_a_clean_copy",
    "test_client_loop.py",
    "test_corpus_dir.py::test_the_flag_and_the_variable_on_the_command_line",
    "test_cost_budgets.py::test_a_forecast_over_budget_exits_99_naming_the_budget_and_the_scale",
    "test_cost_budgets.py::test_a_forecast_within_its_budgets_exits_0",
    "test_cost_budgets.py::test_the_gate_fails_a_candidate_costlier_per_token_with_99",
    "test_cost_budgets.py::test_the_reports_verdict_shows_a_cost_alert_first",
    "test_deployments.py::test_the_choice_is_brute_forces_and_the_cheapest_that_passed",
    "test_deployments.py::test_forecast_on_the_command_line_prints_the_choice_per_scale",
    "test_faults.py",
    "test_fleet.py::test_mmc_mean_wait_through_a_central_queue",
    "test_forecast.py::test_seeds_in_worker_processes_give_the_same_result",
    "test_fuzz_inputs.py::test_alias_bomb_and_huge_plan_through_the_cli",
    "test_fuzz_inputs.py::test_calibrate_on_corrupted_and_non_streamed_run_folders",
    "test_fuzz_inputs.py::test_calibrate_refuses_an_unusable_fit_with_exit_3",
    "test_fuzz_inputs.py::test_fuzz_plan_command",
    "test_fuzz_inputs.py::test_report_on_corrupted_run_folders",
    "test_fuzz_run_folders.py",
    "test_gate.py::test_compare_command_on_simulated_runs",
    "test_gate.py::test_gate_bad_input_exits_2",
    "test_gate.py::test_gate_fails_a_live_30pct_slowdown_on_the_reference_target",
    "test_gate.py::test_gate_identical_runs_pass_and_write_junit_and_summary",
    "test_gate.py::test_gate_warns_when_the_baseline_ran_other_traffic",
    "test_hostile_run_folders.py",
    "test_hostile_targets.py::test_a_run_against_each_family",
    "test_hostile_targets.py::test_a_session_run_against_events_of_the_wrong_shape",
    "test_loadgen.py::test_a_late_loop_makes_the_run_invalid_when_it_merged_chunks",
    "test_loadgen.py::test_a_send_the_generator_fails_is_recorded_and_voids_the_run",
    "test_loadgen.py::test_api_key_from_env_never_reaches_outputs",
    "test_loadgen.py::test_every_chunk_time_of_a_run_agrees_with_the_targets_own_writes",
    "test_loadgen.py::test_killed_run_keeps_its_records",
    "test_loadgen.py::test_open_loop_achieves_the_planned_rate",
    "test_loadgen.py::test_requests_dropped_at_the_in_flight_cap_are_counted_apart",
    "test_loadgen.py::test_slow_target_does_not_slow_the_sending",
    "test_loadgen.py::test_telemetry_agrees_with_the_targets_own_counters",
    "test_locust_user.py",
    "test_old_run_folder.py",
    "test_persona_slos.py",
    "test_pipeline.py::test_calibrate_sweeps_a_target_to_its_knee_and_backtests_held_out_levels",
    "test_pipeline.py::test_a_sweep_whose_generator_cannot_time_its_first_level_fits_nothing",
    "test_queueing.py",
    "test_report.py::test_a_targets_error_words_are_shown_as_text_never_rendered",
    "test_scaleout.py::test_a_master_killed_outright_takes_its_local_workers_with_it",
    "test_scaleout.py::test_a_remote_worker_runs_the_masters_share",
    "test_scaleout.py::test_no_worker_connecting_is_an_invalid_run",
    "test_scaleout.py::test_the_masters_progress_counts_sends_before_any_record",
    "test_scaleout.py::test_two_processes_send_what_one_sends",
    "test_scrub.py::test_hashed_prompts_are_keyed_per_run_and_shared_by_its_workers",
    "test_secrets.py::test_a_key_echoed_in_every_form_is_in_no_output",
    "test_secrets.py::test_a_key_in_a_model_list_a_refusal_or_a_url_is_in_no_output",
    "test_serve_calibration.py",
    "test_sessions.py",
    "test_side_endpoints.py::test_a_run_against_it_ends_cleanly",
    "test_sigkill.py::test_a_master_killed_outright_stops_its_workers",
    "test_sigkill.py::test_a_worker_killed_outright_voids_the_run_and_says_so",
    "test_sigkill.py::test_a_one_process_run_killed_outright_loses_no_record",
    "test_sigkill.py::test_a_remote_worker_killed_outright_loses_no_record",
    "test_sigkill.py::test_a_master_killed_outright_stops_its_remote_workers",
    "test_fast_core.py::test_a_cache_left_by_another_version_of_the_kernel_is_cleared",
    "test_fast_core.py::test_both_cores_give_equal_records_over_random_fleets",
    "test_sigkill.py::test_a_report_at_once_on_a_killed_masters_run_waits_for_its_workers",
    "test_signal_phases.py::test_each_step",
    "test_signal_phases.py::test_report_command_leaves_whole_files_or_none",
    "test_signal_phases.py::test_report_step",
    "test_signal_phases.py::test_target_starting",
    "test_signals.py",
    "test_vllm_server.py",
    "test_workflow.py",
}
FAST_BUDGET_S = 6.0  # a test of the fast tier that takes longer is named at the end of the run
# Under coverage (`make test`), these run unmeasured (pytest-cov's no_cover): queueing-theory checks
# that replay the same simulator paths for thousands of requests over a dozen seeds, which the
# tracer made 3 to 4 times slower (about 100 s of the suite) while other tests cover those paths.
NO_COVER = {
    "test_fleet.py::test_erlang_b_blocking_with_no_room_to_wait",
    "test_fleet.py::test_mmc_mean_wait_through_a_central_queue",
    "test_fleet.py::test_round_robin_makes_each_replica_a_gi_m_1_queue",
    "test_queueing.py",
}

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


def served_log(base_url: str, api_key: str | None = None) -> list[dict[str, Any]]:
    """The reference target's own timing records (`debug=True`) of the requests it served, in
    order; not the 1-token preflight and sizing probes. A target with a key wants it here too."""
    request = urllib.request.Request(base_url.removesuffix("/v1") + "/debug/requests")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    with urllib.request.urlopen(request, timeout=5) as r:
        return [d for d in json.load(r) if d["max_tokens"] != 1]


def served_requests(base_url: str) -> dict[str, dict[str, Any]]:
    """`served_log` by response id (a request the target refused may share its id)."""
    return {d["id"]: d for d in served_log(base_url)}


def write_misses(times: list[float], served: dict[str, Any]) -> list[float]:
    """How far each of a client's chunk times (on the target's clock) falls outside the target's
    own write of that chunk, from when the write began to when it returned: 0 inside. (The
    target's stamps bracket the write: one stamp after it is late whenever the target is
    descheduled in between, as on a busy 2-core machine.)"""
    windows = zip(times, served["chunk_sending"], served["chunk_written"], strict=True)
    return [max(began - t, t - written, 0.0) for t, began, written in windows]


def gap_misses(times: list[float], served: dict[str, Any]) -> list[float]:
    """The same for the gaps between chunks, for times on another clock (a run's own): each
    gap against the shortest and longest the target's write windows allow."""
    began, written = served["chunk_sending"], served["chunk_written"]
    misses = []
    for i in range(len(times) - 1):
        gap, low, high = (
            times[i + 1] - times[i],
            began[i + 1] - written[i],
            written[i + 1] - began[i],
        )
        misses.append(max(low - gap, gap - high, 0.0))
    return misses


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


def _names(item: pytest.Item) -> set[str]:
    """How SLOW and NO_COVER may name a test: its file, or FILE::FUNCTION."""
    return {item.path.name, f"{item.path.name}::{getattr(item, 'originalname', item.name)}"}


def _slow_reason(item: pytest.Item) -> str | None:
    for opt_in in ("engine_load", "vllm"):  # deselected by default; slow wherever selected
        if item.get_closest_marker(opt_in):
            return f"marked {opt_in}"
    if _names(item) & SLOW:
        return "listed in tests/conftest.py SLOW"
    needs = [f for f in SLOW_FIXTURES if f in getattr(item, "fixturenames", ())]
    return f"needs {needs[0]}: {SLOW_FIXTURES[needs[0]]}" if needs else None


@pytest.hookimpl(tryfirst=True)  # before -m and -k deselect anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tests (`-m "not slow"` is the fast tier) and the NO_COVER ones, and keep
    any entry that names no test of a file collected whole, for the summary: a renamed test
    would silently turn fast, or measured."""
    seen: set[str] = set()
    for item in items:
        seen |= _names(item)
        reason = _slow_reason(item)
        if reason:
            item.add_marker(pytest.mark.slow(reason=reason))
        if _names(item) & NO_COVER:
            item.add_marker(pytest.mark.no_cover)
    files = {item.path.name for item in items}
    stale = sorted(e for e in SLOW | NO_COVER if e.split("::")[0] in files and e not in seen)
    if not any("::" in arg for arg in config.args):
        _stale.extend(stale)


_stale: list[str] = []  # SLOW and NO_COVER entries that named no collected test
_durations: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if "slow" not in report.keywords:
        _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Name the unmarked tests over FAST_BUDGET_S: the fast tier stays fast only if they are
    sped up or marked slow (a noisy machine can push one over now and then); and the stale
    entries of SLOW and NO_COVER."""
    if _stale:
        terminalreporter.section("stale test lists")
        terminalreporter.write_line(
            f"tests/conftest.py SLOW or NO_COVER names no test (renamed or removed?): {_stale}"
        )
    over = sorted(((t, n) for n, t in _durations.items() if t >= FAST_BUDGET_S), reverse=True)
    if over:
        terminalreporter.section("fast-tier tests over budget")
        terminalreporter.write_line(
            f"{len(over)} test(s) not marked slow took {FAST_BUDGET_S:g} s or more: mark them "
            "slow (tests/conftest.py SLOW) or make them faster"
        )
        for t, n in over:
            terminalreporter.write_line(f"{t:6.1f}s  {n}")


@contextlib.contextmanager
def loopback_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A threaded HTTP server on 127.0.0.1 answering with `handler`; yields its /v1 URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
