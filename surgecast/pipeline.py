"""The steps of the job (load test, calibrate, back-test, forecast, report) on run folders."""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from loadgen.client import (
    Endpoint,
    MissingModel,
    TargetRefused,
    TargetUnreachable,
    preflight,
    read_api_key,
)
from loadgen.sizing import KEPT_TEXTS, SizedPrompts, probe_sizes, run_salt
from loadgen.telemetry import (
    NvmlSampler,
    PrometheusSampler,
    Sampler,
    TelemetryRecorder,
    metrics_url_for,
)
from scenarios.corpora import corpus_lines, scrub_lines
from scenarios.metrics import (
    Summary,
    output_count_warning,
    summarize_table,
    unplanned_cache_warning,
)
from scenarios.plan import RequestSpec, build_plan, shareable_prompt_share
from scenarios.records import (
    DROPPED,
    RecordWriter,
    RequestRecord,
    write_records,
)
from scenarios.spec import Scenario, ScenarioError, parse_scenario
from scenarios.spec import Telemetry as TelemetrySpec
from scenarios.table import RequestTable
from simulator.engine.core import EngineConfig, engine_from_spec
from simulator.fit.backtest import (
    BacktestRow,
    backtest,
    backtest_warnings,
    predict_plan,
    replay_plan,
)
from simulator.fit.calibrate import (
    SPEED_WINDOW_S,
    Calibration,
    CalibrationError,
    calibrate,
    step_speed,
)
from simulator.forecast.capacity import saturation_throughput
from simulator.forecast.search import Forecaster, ForecastPoint
from simulator.replay.fleet_spec import fleet_from_spec
from simulator.replay.sim import simulate
from surgecast.contracts import write_backtest, write_forecast, write_summary
from surgecast.planview import messiness_table
from surgecast.progressbar import ForecastBar
from surgecast.rundir import RunFolder, machine, new_run_id, versions, writer
from targets.engine_metrics import kept_series
from targets.llama_build import BuildError
from targets.llama_launch import LlamaOptions, engine_limits, launch, limits_dict
from targets.llama_server import LlamaServer, LlamaServerError, probe_limits
from targets.reference_launch import ReferenceTargetProcess
from targets.vllm_launch import VllmOptions, cache_limits
from targets.vllm_launch import engine_limits as vllm_engine_limits
from targets.vllm_launch import launch as launch_vllm
from targets.vllm_server import VllmServer, VllmServerError, probe_cache_info

if TYPE_CHECKING:
    from loadgen.runner import Stopped  # imports Locust (gevent): only when sending

Say = Callable[[str], None]
UNREACHABLE = {"connection_refused", "connection_error"}
DRIFT_NOTE = 0.05  # step-time drift (between or within calibration runs) worth a note


def say_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunOutcome:
    folder: RunFolder
    summary: Summary
    reasons: list[str]  # why the run is invalid; empty when valid
    interrupted: int | None = None  # the exit code of the signal that stopped it (130, 143)

    @property
    def valid(self) -> bool:
        return not self.reasons


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _folder(scenario: Scenario, out: str | Path | None) -> RunFolder:
    """A new run folder; never one that already holds a run."""
    if out:
        folder = RunFolder(Path(out))
        if folder.run_json.exists():
            raise FileExistsError(f"--out {out} already holds a run: choose another folder")
    else:
        base = Path("reports") / new_run_id(scenario.name)
        folder = RunFolder(base)
        n = 1
        while folder.path.exists():  # two runs started within the same second
            n += 1
            folder = RunFolder(base.with_name(f"{base.name}-{n}"))
    folder.create()
    return folder


def _write_meta(
    folder: RunFolder,
    scenario: Scenario,
    scenario_file: str,
    planned: int,
    target: dict[str, Any],
    **fields: Any,
) -> None:
    """run.json: the scenario as resolved, seed, target, versions, machine, start time."""
    folder.write_meta(
        {
            "run_id": folder.path.name,
            "scenario_file": scenario_file,
            "scenario": scenario.model_dump(mode="json", by_alias=True),
            "seed": scenario.traffic.seed,
            "planned_requests": planned,
            "duration_s": scenario.traffic.duration_s,
            "target": target,
            "versions": versions(),
            "machine": machine(),
            "started_at": _now(),
            **fields,
        },
    )


# of content chunks read with the one before them: each merge spoils two gaps (its own, 0, and
# the one before, doubled), so p99 ITL holds below this
MERGED_LIMIT = 0.0025


def _late_loop(generator: dict[str, Any], max_lag_ms: float) -> str | None:
    """Why the generator's lateness spoiled its times, if it did: its loop (in any of its
    processes) woke or read later than `max_lag_ms` at p99, and the times carry it (reads the
    kernel did not stamp) or it merged chunks (more than MERGED_LIMIT of them read in one
    receive with the chunk before, their gaps lost). Kernel-stamped chunks far enough apart
    not to merge keep their times however late the loop reads them."""
    for lag in [w["loop_lag"] for w in generator.get("workers", [])] or [generator["loop_lag"]]:
        if lag["p99_ms"] <= max_lag_ms:
            continue
        said = (
            f"generator overloaded: its event loop woke or read {lag['p99_ms']:.1f} ms late at "
            f"p99 > traffic.max_loop_lag_ms {max_lag_ms:g}"
        )
        if lag.get("unstamped_reads", 0) or "chunks" not in lag:
            return f"{said}, and its reads were not stamped by the kernel: each time carries it"
        merged = lag["merged"] / max(lag["chunks"], 1)
        if merged > MERGED_LIMIT:
            return (
                f"{said}, and {merged:.2%} of the content chunks were read in one receive "
                "with the chunk before them: their gaps (ITL, and TTFT where the first two "
                "came together) are lost"
            )
    return None


def invalid_reasons(
    scenario: Scenario,
    table: RequestTable,
    summary: Summary,
    planned: int,
    generator: dict[str, Any] | None = None,
) -> list[str]:
    """Why a run cannot be trusted: the generator could not keep its plan (loop lag, CPU,
    drops, lateness), the plan was empty, or the target failed every request."""
    reasons = []
    traffic = scenario.traffic
    if generator and generator.get("failure"):
        reasons.append(f"distributed run failed: {generator['failure']}")
    late = _late_loop(generator, traffic.max_loop_lag_ms) if generator else None
    if late:
        reasons.append(late)
    cpu = generator["cpu"]["mean"] if generator else 0.0
    if cpu > traffic.max_generator_cpu:
        reasons.append(
            f"generator saturated: it used {cpu:.0%} of a core on average > "
            f"traffic.max_generator_cpu {traffic.max_generator_cpu:.0%} (split the load: "
            "a lower rate per process)"
        )
    for host in generator.get("hosts", []) if generator else []:
        share = host["cpu"] / host["cores"]
        if share > traffic.max_generator_cpu:
            reasons.append(
                f"generator saturated: on {host['host']} its {host['processes']} workers (and the "
                "master, if it runs there) used "
                f"{host['cpu']:.2f} of the {host['cores']} cores they may run on ({share:.0%}) "
                f"> traffic.max_generator_cpu {traffic.max_generator_cpu:.0%} (give them more "
                "cores, or spread them over more hosts)"
            )
    if planned == 0:
        reasons.append("the plan is empty: the arrival rate x traffic.duration_s is too small")
    if summary.dropped:
        reasons.append(
            f"generator dropped {summary.dropped} planned requests at its in-flight cap "
            "(max_in_flight): they were never sent"
        )
    if summary.lateness_p99_ms > scenario.traffic.max_lateness_ms:
        reasons.append(
            f"generator fell behind: p99 send lateness {summary.lateness_p99_ms:.0f} ms "
            f"> traffic.max_lateness_ms {scenario.traffic.max_lateness_ms:g}"
        )
    if len(table) and bool(_kind_in(table, UNREACHABLE).all()):
        reasons.append("target unreachable: every request failed to connect")
    elif len(table) and not table.ok.any():
        counts = np.bincount(table.error_kind[table.error_kind >= 0], minlength=len(table.kinds))
        kind = table.kinds[int(counts.argmax())] if counts.any() else "unknown"
        detail = dict(table.examples).get(kind)
        reasons.append(
            f"no request succeeded: {int(counts.max(initial=0))} x {kind}"
            + (f" ({detail})" if detail else "")
        )
    else:
        died = target_died(table)
        if died:
            reasons.append(died)
    return reasons


BROKEN = UNREACHABLE | {"connection_reset", "stream_reset"}


def _kind_in(table: RequestTable, kinds: set[str]) -> np.ndarray:
    """Rows whose error kind is one of `kinds`."""
    codes = [i for i, name in enumerate(table.kinds) if name in kinds]
    return np.isin(table.error_kind, codes)


def target_died(table: RequestTable) -> str | None:
    """Why the run looks like its target died: after some successes, every request from some
    point on (at least 5, and 5% of all) found no server or had its connection cut."""
    sent = np.flatnonzero(~_kind_in(table, {DROPPED, "cancelled"}))
    sent = sent[np.argsort(table.start[sent], kind="stable")]  # in the order they were sent
    ok = table.ok[sent]
    if not ok.any():
        return None
    last_ok = int(np.flatnonzero(ok)[-1])
    tail = sent[last_ok + 1 :]
    if len(tail) < max(5, 0.05 * len(sent)) or not _kind_in(table, BROKEN)[tail].all():
        return None
    return (
        f"the target stopped answering {table.start[tail[0]]:.1f} s into the run: the last "
        f"{len(tail)} requests found no server or were cut off (did it crash? its log may say)"
    )


@dataclass
class _Live:
    """The target of a run: its URL, and the engine process when surgecast started one."""

    base_url: str
    llama: LlamaServer | None = None
    vllm: VllmServer | None = None

    @property
    def process(self) -> LlamaServer | VllmServer | None:
        return self.llama or self.vllm


@contextlib.contextmanager
def _target(
    scenario: Scenario,
    target_url: str | None,
    llama: LlamaOptions | None,
    say: Say,
    vllm: VllmOptions | None = None,
) -> Iterator[_Live]:
    if vllm is not None:
        started = launch_vllm(vllm, scenario.target.model, say)
        try:
            yield _Live(started.base_url, vllm=started)
        finally:
            started.close()
        return
    if llama is not None:
        server = launch(llama, scenario.target.model, say)
        try:
            yield _Live(server.base_url, server)
        finally:
            server.close()
        return
    url = target_url or scenario.target.base_url
    if url:
        yield _Live(url)
        return
    spec = scenario.reference_target
    with ReferenceTargetProcess(
        engine_from_spec(spec),
        model=scenario.target.model,
        faults=spec.faults,
        stream_interval=spec.stream_interval,
    ) as base_url:
        yield _Live(base_url)


def run_load(
    scenario: Scenario,
    scenario_file: str,
    *,
    target_url: str | None = None,
    out: str | Path | None = None,
    say: Say = say_stderr,
    progress: bool = True,
    llama: LlamaOptions | None = None,
    vllm: VllmOptions | None = None,
    plan: Sequence[RequestSpec] | None = None,
    scale: ScaleOut | None = None,
) -> RunOutcome:
    """Send the scenario's plan (or `plan`, when given) to the target (the reference target
    when none is given); with `scale`, from several generator processes.

    With `llama`, surgecast starts llama-server on loopback (built or restored) and reads its
    batch limits from /props; an external llama-server's limits are read the same way. With
    `vllm`, surgecast starts vLLM (its own venv) and reads its KV-cache limits from /metrics; an
    external vLLM's cache limits are read the same way.
    """
    api_key = read_api_key(scenario.target)  # fails before anything starts if it is missing
    plan_source = "scenario" if plan is None else "given"  # given: not the traffic's draw
    scale = scale or ScaleOut()
    if scale.distributed and plan is not None:
        raise ValueError("a plan given to the run is sent by one process (no scale-out)")
    if plan is None:  # bad traces, corpora and sizes fail here, before any folder
        plan = build_plan(scenario)
    plan = list(plan)
    salt = run_salt() if scenario.target.salt_prompts else ""
    base_dir = scenario.base_dir or Path(scenario_file).parent
    prompts = SizedPrompts(scenario, base_dir, salt)
    for line in corpus_lines(scenario, base_dir):
        say(f"text: {line}")
    for line in scrub_lines(scenario, base_dir):
        say(f"privacy: {line}")
    folder = _folder(scenario, out)
    launched = llama is not None or vllm is not None
    external = not launched and bool(target_url or scenario.target.base_url)
    kind = "llama-server" if llama else "vllm" if vllm else "external" if external else "reference"
    target_meta: dict[str, Any] = {
        "kind": kind,
        "base_url": None if launched else target_url or scenario.target.base_url,
        "prompt_salt": salt or None,
    }
    if kind == "reference":
        target_meta["engine"] = engine_from_spec(scenario.reference_target).to_dict()
    _write_meta(
        folder,
        scenario,
        scenario_file,
        len(plan),
        target_meta,
        status="running",
        source="measured",
        plan=plan_source,
        writer=writer(),
    )
    drawn = (
        f"{scenario.traffic.duration_s:g} s, {scenario.traffic.describe()} "
        f"(seed {scenario.traffic.seed})"
    )
    last = max((s.arrival for s in plan), default=0.0)
    given = f"{last:.3g} s, a plan given to the run (not the scenario's traffic)"
    say(
        f"run {folder.path.name}: {len(plan)} requests planned over "
        + (drawn if plan_source == "scenario" else given)
    )
    died: list[str] = []
    try:
        with _target(scenario, target_url, llama, say, vllm) as live:
            base_url = live.base_url
            target_meta["base_url"] = base_url
            endpoint = Endpoint.from_target(scenario.target, base_url, api_key)
            if live.llama is not None:
                endpoint = _llama_target(live.llama, target_meta, endpoint, say)
            elif live.vllm is not None:
                endpoint = _vllm_target(live.vllm, target_meta, endpoint, say)
            elif external:
                _probe_external(base_url, target_meta, say)
            else:
                say(f"reference target up at {base_url}")
            folder.update_meta(target=target_meta)
            preflight(endpoint)
            probes = probe_sizes(endpoint, prompts, scenario.mix()[0].name)
            folder.update_meta(
                sizing={
                    **asdict(probes),
                    "chars_per_token": prompts.chars_per_token,
                    "overhead_tokens": prompts.overhead_tokens,
                }
            )
            if probes.learned:
                say(
                    f"prompt sizing: {prompts.chars_per_token:.2f} characters per token, "
                    f"{prompts.overhead_tokens:.0f} tokens of template per request "
                    "(probed; refined from every response's usage)"
                )
            elif probes.rejected == probes.sent:
                say("prompt sizing: the target refused every probe (429/503); sizes are estimates")
            else:
                say("prompt sizing: the target reports no usage; prompt sizes are estimates")
            if scale.distributed:
                table, generator, stopped = _send_distributed(
                    plan, scenario, endpoint, folder, progress, prompts, scale
                )
            else:
                table, generator, stopped = _send_plan(
                    plan, scenario, endpoint, folder, progress, prompts
                )
            engine = live.process
            if engine is not None and not engine.alive():
                died.append(engine.death_message("died during the run"))
            mess = messiness_table(prompts)
            if mess:
                say(
                    f"messiness of the text sent (each persona's first {KEPT_TEXTS} messages):\n"
                    + mess
                )
    except (
        TargetUnreachable,
        TargetRefused,
        MissingModel,
        BuildError,
        LlamaServerError,
        VllmServerError,
    ) as e:
        folder.update_meta(
            status="not started", finished_at=_now(), validity={"valid": False, "reasons": [str(e)]}
        )
        raise
    except KeyboardInterrupt:
        folder.update_meta(
            status="interrupted",
            finished_at=_now(),
            validity={"valid": False, "reasons": ["interrupted"]},
        )
        raise
    summary = summarize_table(
        table, scenario.thresholds(), scenario.traffic.duration_s, scenario.persona_thresholds()
    )
    write_summary(folder.summary, summary)
    reasons = invalid_reasons(scenario, table, summary, len(plan), generator) + died
    if stopped is not None:
        reasons.insert(
            0,
            f"interrupted by {stopped.name} {stopped.at_s:.1f} s into the run: the plan was not "
            "all sent (requests still in flight then were given time to finish, then cancelled)",
        )
    mean_prompt = sum(s.prompt_tokens for s in plan) / max(len(plan), 1)
    planned_share = shareable_prompt_share(plan) + prompts.common_prefix_tokens / max(
        mean_prompt, 1
    )
    warnings = [
        w
        for w in (
            unplanned_cache_warning(summary.tokens, planned_share),
            output_count_warning(summary.tokens),
        )
        if w
    ]
    for warning in warnings:
        say(f"warning: {warning}")
    folder.update_meta(
        status="finished" if stopped is None else "interrupted",
        finished_at=_now(),
        validity={"valid": not reasons, "reasons": reasons},
        slos_passed=summary.slos_passed,
        warnings=warnings,
    )
    return RunOutcome(folder, summary, reasons, stopped.exit_code if stopped else None)


def _llama_target(
    server: LlamaServer, meta: dict[str, Any], endpoint: Endpoint, say: Say
) -> Endpoint:
    """Record the launched server's limits; its random model's EOS is ignored (planned lengths)."""
    limits = engine_limits(server)
    assert server.limits is not None
    meta["limits"] = limits
    meta["llama_server"] = {
        **server.limits.to_dict(),
        "binary": str(server.config.binary),
        "model": str(server.config.model),
        "ctx": server.config.ctx,
        "threads": server.config.threads,
        "startup_s": round(server.startup_s, 3),
    }
    say(
        f"llama-server up at {server.base_url} in {server.startup_s:.2f} s: "
        f"{server.limits.total_slots} slots x {server.limits.n_ctx_slot} tokens of context"
    )
    body = {"ignore_eos": True, **endpoint.extra_body}
    return replace(endpoint, extra_body=body)


def _vllm_target(
    server: VllmServer, meta: dict[str, Any], endpoint: Endpoint, say: Say
) -> Endpoint:
    """Record the launched server's limits; its random model's EOS is ignored (planned lengths)."""
    limits = server.limits
    assert limits is not None
    meta["limits"] = vllm_engine_limits(server)
    meta["vllm"] = {
        **limits.to_dict(),
        "model": str(server.config.model),
        "kv_cache_gib": server.config.kv_cache_gib,
        "stream_interval": server.config.stream_interval,
        "startup_s": round(server.startup_s, 3),
    }
    say(
        f"vLLM up at {server.base_url} in {server.startup_s:.1f} s: max_num_seqs "
        f"{limits.max_num_seqs}, {limits.cache.num_blocks} KV blocks x {limits.cache.block_size} "
        f"tokens, prefix caching {'on' if limits.cache.prefix_caching else 'off'}"
    )
    body = {"ignore_eos": True, **endpoint.extra_body}
    return replace(endpoint, extra_body=body)


def _probe_external(base_url: str, meta: dict[str, Any], say: Say) -> None:
    """An external llama-server declares its limits at /props, a vLLM its KV cache at /metrics;
    other servers are left alone."""
    limits = probe_limits(base_url)
    if limits is None:
        cache = probe_cache_info(base_url)
        if cache is not None:
            meta["limits"] = cache_limits(cache)
            meta["vllm"] = asdict(cache)
            say(
                f"target is vLLM: {cache.num_blocks} KV blocks x {cache.block_size} tokens, "
                f"prefix caching {'on' if cache.prefix_caching else 'off'} (read from /metrics; "
                "give --max-num-seqs to calibrate with its batch limit)"
            )
        return
    meta["limits"] = limits_dict(limits.total_slots, limits.kv_cache_tokens)
    meta["llama_server"] = limits.to_dict()
    say(
        f"target is llama-server: {limits.total_slots} slots x {limits.n_ctx_slot} tokens "
        "of context (read from /props)"
    )


def _send_plan(
    plan: list[RequestSpec],
    scenario: Scenario,
    endpoint: Endpoint,
    folder: RunFolder,
    progress: bool,
    prompts: SizedPrompts,
) -> tuple[RequestTable, dict[str, Any], Stopped | None]:
    """The Locust run, with records and telemetry appended to the folder as they come; the
    records' columns (read back as a stream, no record kept); how late its event loop woke
    (`LoopLag.summary`); and the signal that stopped it, if one did."""
    from loadgen.runner import LoadRun  # imports Locust (gevent): only here

    with (
        open(folder.requests, "a", encoding="utf-8") as stream,
        open(folder.telemetry, "a", encoding="utf-8") as telemetry_stream,
    ):
        telemetry = TelemetryRecorder(
            _samplers(scenario.telemetry, endpoint.base_url), telemetry_stream
        )
        load = LoadRun(
            plan,
            endpoint,
            RecordWriter(stream),
            max_in_flight=scenario.traffic.max_in_flight,
            store_prompts=scenario.privacy.store_prompts,
            progress=sys.stderr if progress else None,
            telemetry=telemetry,
            telemetry_every_s=scenario.telemetry.interval_s,
            prompts=prompts,
            stop_grace_s=scenario.traffic.stop_grace_s,
        )
        try:
            load.run()
            stream.flush()
            generator = {"loop_lag": load.loop_lag.summary(), "cpu": load.cpu.summary()}
            _generator_said(folder, generator, load.progress.skipped)
            return folder.table(), generator, load.stopped
        finally:
            telemetry.close()
            folder.update_meta(telemetry_errors=telemetry.errors)


@dataclass(frozen=True)
class ScaleOut:
    """Several generator processes on Locust's master/worker channel: `processes` started here
    on this host, and `remote` more that connect from other hosts (`surgecast worker`)."""

    processes: int = 1
    remote: int = 0
    bind_host: str = "127.0.0.1"
    bind_port: int = 0  # 0: a free port (local processes only)
    connect_timeout_s: float = 60.0

    @property
    def workers(self) -> int:
        return (self.processes if self.processes > 1 else 0) + self.remote

    @property
    def distributed(self) -> bool:
        return self.workers > 0


def _send_distributed(
    plan: list[RequestSpec],
    scenario: Scenario,
    endpoint: Endpoint,
    folder: RunFolder,
    progress: bool,
    prompts: SizedPrompts,
    scale: ScaleOut,
) -> tuple[RequestTable, dict[str, Any], Stopped | None]:
    """`_send_plan` over several worker processes: the master here writes the records they
    send back; the generator's figures are the worst worker's, each worker's kept beside."""
    import subprocess

    import gevent

    from loadgen.distributed import DistributedError, Master, assignment

    port = scale.bind_port or _free_port(scale.bind_host)
    local = scale.processes if scale.processes > 1 else 0
    say_stderr(
        f"master on {scale.bind_host}:{port}: "
        + (f"{local} local worker processes" if local else "")
        + (" and " if local and scale.remote else "")
        + (f"waiting for {scale.remote} remote workers" if scale.remote else "")
    )
    children: list[subprocess.Popen[bytes]] = []
    with (
        open(folder.requests, "a", encoding="utf-8") as stream,
        open(folder.telemetry, "a", encoding="utf-8") as telemetry_stream,
    ):
        master = Master(scale.bind_host, port, stream)
        telemetry = TelemetryRecorder(
            _samplers(scenario.telemetry, endpoint.base_url), telemetry_stream
        )

        def sample() -> None:  # on the run's clock, from the plan's zero
            while True:
                if master.started:
                    telemetry.tick(time.time() - master.zero)
                gevent.sleep(scenario.telemetry.interval_s)

        def said(elapsed: float) -> None:
            print(master.progress_line(elapsed, len(plan)), file=sys.stderr, flush=True)

        sampler = gevent.spawn(sample)
        failure = None
        try:
            with master.catching_signals():
                host = "127.0.0.1" if scale.bind_host in ("*", "0.0.0.0") else scale.bind_host
                command = [sys.executable, "-m", "surgecast", "worker"]
                command += ["--master-host", host, "--master-port", str(port)]
                # each in a session of its own: a terminal's Ctrl-C reaches the master only,
                # which stops them (their requests in flight get their grace)
                children = [subprocess.Popen(command, start_new_session=True) for _ in range(local)]
                workers = master.wait_for_workers(scale.workers, scale.connect_timeout_s)
                work = assignment(plan, scenario, endpoint, prompts)
                master.run(
                    workers, work, said if progress else None, 60.0, _end_timeout(plan, endpoint)
                )
        except DistributedError as e:  # the records that came are kept; the run is invalid
            failure = str(e)
        finally:
            prompts.keep_texts(master.texts())
            sampler.kill()
            master.quit()
            for child in children:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
            telemetry.close()
            folder.update_meta(telemetry_errors=telemetry.errors)
    generator = master.generator(failure)
    _generator_said(folder, generator, master.skipped)
    return folder.table(), generator, master.stopping_signal()


def _end_timeout(plan: list[RequestSpec], endpoint: Endpoint) -> float:
    """The longest a distributed run may take: its last arrival, then each try's timeout."""
    last = max((s.arrival for s in plan), default=0.0)
    retries = max((s.retry.max_retries for s in plan if s.retry), default=0)
    return last + (retries + 2) * endpoint.timeout_s + 60.0


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1" if host in ("*", "0.0.0.0") else host, 0))
        return int(s.getsockname()[1])


def _generator_said(folder: RunFolder, generator: dict[str, Any], skipped: int) -> None:
    """Keep how well the generator held its plan in run.json, and say it."""
    folder.update_meta(turns_not_sent=skipped, generator=generator)
    lag, cpu = generator["loop_lag"], generator["cpu"]
    if lag["samples"]:
        several = (
            f" (the worst of {generator['processes']} processes)" if "workers" in generator else ""
        )
        say_stderr(
            f"generator event-loop lag{several}: p50 {lag['p50_ms']:.1f} ms, p99 "
            f"{lag['p99_ms']:.1f} ms, max {lag['max_ms']:.1f} ms (timer wake-ups and "
            "reads after the kernel's arrival); CPU: mean "
            f"{cpu['mean']:.0%} of one core, busiest second {cpu['max']:.0%}"
        )
    for host in generator.get("hosts", []):
        say_stderr(
            f"generator CPU on {host['host']}: {host['processes']} workers"
            + (" and the master" if host["host"] == generator["master"]["host"] else "")
            + f" used {host['cpu']:.2f} of the {host['cores']} cores they may run on"
        )
    if skipped:
        say_stderr(
            f"{skipped} planned session turns not sent: an earlier turn of their "
            "session failed or was abandoned"
        )


def _samplers(spec: TelemetrySpec, base_url: str) -> list[Sampler]:
    samplers: list[Sampler] = []
    if spec.prometheus:
        url = spec.metrics_url or metrics_url_for(base_url)
        samplers.append(PrometheusSampler(url, keep=kept_series))
    if spec.gpu:
        samplers.append(NvmlSampler())
    return samplers


def limits_from_runs(folders: Sequence[RunFolder]) -> EngineConfig | None:
    """Batch limits the runs' target declared (reference target, llama-server, vLLM), if any."""
    for f in folders:
        target = f.meta().target
        if target.engine is not None:
            return target.engine
        limits = target.limits
        if limits:
            default = EngineConfig()
            return replace(
                default,
                max_num_seqs=int(limits.get("max_num_seqs", default.max_num_seqs)),
                kv_cache_tokens=int(limits.get("kv_cache_tokens", default.kv_cache_tokens)),
                max_batched_tokens=int(
                    limits.get("max_batched_tokens", default.max_batched_tokens)
                ),
                block_size=int(limits.get("block_size", default.block_size)),
                enable_prefix_caching=bool(
                    limits.get("enable_prefix_caching", default.enable_prefix_caching)
                ),
            )
    return None


def declared_limits(folders: Sequence[RunFolder]) -> set[str]:
    """Which batch limits the runs' target declared (all of the reference target's)."""
    for f in folders:
        target = f.meta().target
        if target.engine is not None:
            return {"max_num_seqs", "kv_cache_tokens", "max_batched_tokens"}
        if target.limits:
            return set(target.limits)
    return set()


def calibrate_runs(
    folders: Sequence[RunFolder],
    *,
    max_num_seqs: int | None = None,
    kv_cache_tokens: int | None = None,
) -> Calibration:
    records: list[RequestRecord] = []
    offset = 0.0
    for f in folders:
        if not streamed(f):
            raise CalibrationError(
                f"{f.path}: calibration needs streamed responses (rerun with streaming on: "
                "target.stream: true)"
            )
    runs = [f.records() for f in folders]  # read once: a bad line is warned about once
    for run in runs:  # lay the runs end to end so their steps never interleave
        for r in run:
            records.append(_shifted(r, offset))
        offset = max((r.end or r.start for r in records), default=offset) + 1000.0
    declared = limits_from_runs(folders)
    limits = declared or EngineConfig()
    if max_num_seqs:
        limits = replace(limits, max_num_seqs=max_num_seqs)
    if kv_cache_tokens:
        limits = replace(limits, kv_cache_tokens=kv_cache_tokens)
    calibration = calibrate(records, limits)
    notes = [*calibration.notes, *_saturation_notes(folders, calibration)]
    calibration = replace(calibration, notes=notes, runs=[_run_id(f) for f in folders])
    if not all(math.isfinite(v) for v in calibration.fit.values):
        raise CalibrationError(
            "the fit is not finite: the records do not determine the step cost "
            "(check the run's records, or rerun with more requests)"
        )
    calibration = _with_drift(calibration, runs)
    guessed = []  # only limits neither the target nor the command line gave
    from_target = declared_limits(folders)
    if "max_num_seqs" not in from_target and not max_num_seqs:
        guessed.append((f"max_num_seqs {limits.max_num_seqs}", "--max-num-seqs"))
    if "kv_cache_tokens" not in from_target and not kv_cache_tokens:
        guessed.append((f"KV cache {limits.kv_cache_tokens} tokens", "--kv-cache-tokens"))
    if guessed:
        assumed = (
            f"batch limits are ASSUMED ({', '.join(g[0] for g in guessed)}): give "
            f"{' and '.join(g[1] for g in guessed)} with the target's real settings, "
            "they bound every forecast"
        )
        calibration = replace(calibration, notes=[*calibration.notes, assumed])
    return calibration


def _with_drift(calibration: Calibration, runs: Sequence[Sequence[RequestRecord]]) -> Calibration:
    """The calibration with its step-time drift: the larger of the spread between the runs'
    speeds and the spread of 20 s windows within them (a held-out run may meet either)."""
    cost = calibration.engine.cost
    speeds = [step_speed(run, cost) for run in runs]
    known = [s.whole for s in speeds if s.whole is not None]
    windows = [w for s in speeds for w in s.windows]
    between = float(np.std(known, ddof=1)) if len(known) >= 2 else 0.0
    within = float(np.std(windows, ddof=1)) if len(windows) >= 2 else 0.0
    calibration = replace(calibration, drift=max(between, within))
    notes = []
    if between > DRIFT_NOTE:
        notes.append(
            f"step time drifted between the runs ({between:.0%} relative sd, runs at "
            + ", ".join(f"{r:.2f}" for r in known)
            + " x the fit): the target's speed changed; intervals include it"
        )
    if within > DRIFT_NOTE:
        notes.append(
            f"step time wandered within the runs ({within:.0%} relative sd over "
            f"{len(windows)} windows of {SPEED_WINDOW_S:g} s): intervals include it"
        )
    return replace(calibration, notes=[*calibration.notes, *notes])


NEAR_SATURATION = 0.85  # a run's load, against the calibrated saturation throughput


def _saturation_notes(folders: Sequence[RunFolder], calibration: Calibration) -> list[str]:
    """A note for each run sent near or beyond what the calibrated replica can serve: there,
    queueing amplifies any error of the fit, and a forecast leans on that edge."""
    notes = []
    for f in folders:
        records = f.records()
        plan = replay_plan(records)
        span = max((r.end or r.start for r in records), default=0.0) - min(
            (r.start for r in records), default=0.0
        )
        if not plan or span <= 0:
            continue
        load = len(records) / span / saturation_throughput(calibration.engine, plan)
        if load >= NEAR_SATURATION:
            notes.append(
                f"{f.path.name} ran at {load:.0%} of the calibrated saturation throughput: near "
                "saturation small errors of the fit grow into large latency errors; calibrate "
                "on lighter loads and back-test this one"
            )
    return notes


def _shifted(r: RequestRecord, dt: float) -> RequestRecord:
    if dt == 0:
        return r
    return replace(
        r,
        intended_start=r.intended_start + dt,
        start=r.start + dt,
        first_token=None if r.first_token is None else r.first_token + dt,
        end=None if r.end is None else r.end + dt,
        chunk_times=[t + dt for t in r.chunk_times],
    )


def _run_id(folder: RunFolder) -> str:
    return folder.meta().run_id


def in_sample(folder: RunFolder, calibration: Calibration) -> bool:
    """The calibration was fitted on this run: its back-test cannot show a forecast's error."""
    return _run_id(folder) in calibration.runs


def streamed(folder: RunFolder) -> bool:
    """False when the run's scenario turned streaming off (its records time no tokens)."""
    target = folder.meta().scenario.get("target")
    return not (isinstance(target, dict) and target.get("stream") is False)


def backtest_run(folder: RunFolder, calibration: Calibration) -> list[BacktestRow]:
    """Predict the folder's measured run with `calibration`, from its own send times and from
    its scenario's plan; saves and returns the rows."""
    records = folder.records()
    rows, result = backtest(records, calibration)
    scenario = _scenario_of(folder)
    if scenario is not None:
        rows += predict_plan(records, scenario, calibration)
    write_records(folder.simulated, result.records)
    write_backtest(
        folder.backtest, rows, backtest_warnings(calibration, rows), in_sample(folder, calibration)
    )
    return rows


def _scenario_of(folder: RunFolder) -> Scenario | None:
    """The scenario a measured run's plan was drawn from, as its run.json keeps it (None: not
    there or no longer valid, a simulated run, or a plan given to the run, as a staircase is)."""
    meta = folder.meta()
    if meta.source != "measured" or meta.plan != "scenario":
        return None
    base = Path(meta.scenario_file).resolve().parent if meta.scenario_file else None
    try:
        return parse_scenario(meta.scenario, str(folder.run_json), base)
    except ScenarioError:
        return None


def forecast_scenario(
    scenario: Scenario, calibration: Calibration, scales: Sequence[float], say: Say = say_stderr
) -> list[ForecastPoint]:
    """Forecast at each scale, with today's traffic (x1) first as the baseline."""
    scales = sorted({1.0, *scales})
    say(f"forecast: fewest replicas meeting every SLO at x{', x'.join(f'{s:g}' for s in scales)}")
    bar = ForecastBar(scales)
    forecaster = Forecaster(scenario, calibration, progress=bar)
    c = forecaster.config
    say(
        f"  x1 is {forecaster.base_rate:.3g} req/s; each fleet: {c.seeds} seeds of "
        f"{c.duration_s:g} s simulated, load under {c.max_load:.0%} of saturation "
        f"({forecaster.replica_capacity:.3g} req/s a replica), "
        f"${scenario.cost.gpu_hour_usd:g}/GPU-hour x {scenario.cost.gpus_per_replica} per replica"
    )
    try:
        return forecaster.run(scales)
    finally:
        bar.close()


def save_forecast(folder: RunFolder, points: Sequence[ForecastPoint]) -> None:
    write_forecast(folder.forecast, list(points))


def simulate_scenario(
    scenario: Scenario,
    scenario_file: str,
    calibration: Calibration,
    *,
    scale: float = 1.0,
    replicas: int = 1,
    out: str | Path | None = None,
) -> RunOutcome:
    """The scenario's plan through the calibrated model; a run folder like a measured one."""
    try:
        fleet = fleet_from_spec(scenario.fleet)
    except ValueError as e:
        raise ScenarioError(scenario_file, [str(e)]) from None
    if fleet.initial_replicas is not None:  # an autoscaler starts from its own count
        replicas = fleet.initial_replicas
    folder = _folder(scenario, out)
    plan = calibration.tokens.apply(build_plan(scenario, rate_scale=scale), scenario.traffic.seed)
    result = simulate(
        plan,
        calibration.engine,
        replicas=replicas,
        timeout_s=scenario.target.timeout_s,
        fleet=fleet.config,
    )
    write_records(folder.requests, result.records)
    summary = summarize_table(
        result.table,
        scenario.thresholds(),
        scenario.traffic.duration_s,
        scenario.persona_thresholds(),
    )
    write_summary(folder.summary, summary)
    target = {
        "kind": "simulated",
        "replicas": replicas,
        "scale": scale,
        "engine": calibration.engine.to_dict(),
        "fleet": {
            "rejected": result.rejected,
            "timeouts": result.timeouts,
            "abandoned": result.abandoned,
            **asdict(result.fleet),
        },
    }
    _write_meta(
        folder,
        scenario,
        scenario_file,
        len(plan),
        target,
        status="finished",
        source="simulated",
        validity={"valid": True, "reasons": []},
        slos_passed=summary.slos_passed,
    )
    return RunOutcome(folder, summary, [])
