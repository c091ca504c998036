"""Forecast fidelity on a real engine: calibrate on two light loads, predict two heavier ones.

    python benchmarks/fidelity.py [--engine llama-server|vllm|reference] [--slots 8,1]
                                  [--level-s 40] [--min-requests 40] [--held-out-requests 200]
                                  [--max-level-s 300] [--keep DIR] [--repeat]
    python benchmarks/fidelity.py --engine vllm --slots 8 --from DIR   # kept runs, no engine

For each slot count: measure the server's capacity (closed-loop users, twice the slots, no
think time); send a staircase, as `surgecast calibrate --scenario` does (`slots` requests at
once whose answers end 40 tokens apart, so the batch holds every size from full to one); run
open-loop Poisson levels at 15% and 35% of capacity (fitted, each about --min-requests
requests) and at 60% and 80% (held out, about --held-out-requests each), interleaved (15%,
60%, 35%, 80%) so the engine's slow drift in speed meets the fit and the held-out levels
alike; calibrate on the light
levels and the staircase, and predict the held-out ones from their own send times (replay) and
from the scenario's plan (plan). Prints one table of held-out
errors, each predicted 90% interval and whether the measured value fell inside it, then the
aim: median |error| of p50/p95 E2E at most 5%, of p95 TTFT at most 10%, and 9 in 10 inside.
The engine needs the machine's cores to itself: other work on them moves its capacity between
levels, and the table with it.
Loopback only; the engine is started and stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenarios.metrics import metric_samples
from scenarios.spec import Scenario, parse_scenario
from simulator.fit.backtest import BacktestRow
from simulator.fit.speed import step_time_ratio
from surgecast.calibration import calibrate_runs
from surgecast.live_run import run_load
from surgecast.predict import backtest_run
from surgecast.rundir import RunFolder
from surgecast.sweep import staircase
from surgecast.tables import markdown
from targets.reference_launch import url_or_reference

FIT = (0.15, 0.35)
HELD_OUT = (0.60, 0.80)
INTERLEAVED = tuple(share for pair in zip(FIT, HELD_OUT, strict=True) for share in pair)


def workload(slots: int, level_s: float, extra: dict[str, object]) -> dict[str, object]:
    # one slot serves one request at a time: shorter answers, so a level holds enough of them
    output = (24, 96) if slots > 1 else (8, 32)
    return {
        "name": f"fidelity-{slots}",
        "target": {"api": "chat", "timeout_s": 120, "extra_body": extra},
        "reference_target": {
            "max_num_seqs": slots,
            "kv_cache_tokens": 65536,
            "cold_start_s": 0.2,
            "step": {"base_ms": 12, "per_decode_seq_ms": 1.0, "per_prefill_token_ms": 0.05},
        },
        "traffic": {"rate": 1, "duration_s": level_s, "seed": 11},
        "workload": {
            "prompt_tokens": {"dist": "uniform", "low": 40, "high": 400},
            "output_tokens": {"dist": "uniform", "low": output[0], "high": output[1]},
        },
    }


@contextlib.contextmanager
def engine(kind: str, slots: int) -> Iterator[tuple[str | None, dict[str, object]]]:
    """(base URL, extra request body) of a started engine; None URL: the reference target
    the pipeline starts itself."""
    if kind == "reference":
        yield None, {}
        return
    if kind == "vllm":  # `make vllm` first; dummy weights, prefix cache off. The tiny model: on
        # a 2-core CPU the small one serves 0.3 req/s even in float32, too slow to sweep
        from targets.vllm_model import ensure_model_dir
        from targets.vllm_server import VllmConfig, VllmServer

        cfg = VllmConfig(ensure_model_dir("tiny"), max_num_seqs=slots, prefix_caching=False)
        with VllmServer(cfg) as vllm:
            yield vllm.base_url, {"ignore_eos": True}
        return
    from targets.gguf_model import ensure_model  # only when asked for
    from targets.llama_build import ensure_server
    from targets.llama_server import LlamaServer, LlamaServerConfig

    # the ~100M-parameter model: compute-bound, as a GPU deployment is (the tiny one is not)
    config = LlamaServerConfig(
        ensure_server(build=True), ensure_model("small"), slots, 4096 * slots
    )
    with LlamaServer(config) as server:
        yield server.base_url, {"ignore_eos": True}


def level(base: dict[str, object], traffic: Mapping[str, object]) -> Scenario:
    return parse_scenario({**base, "traffic": traffic})


Result = tuple[str, float, BacktestRow]  # (engine config, load share, held-out row)


def level_seconds(rate: float, level_s: float, min_requests: int, max_s: float) -> float:
    """A level's length: `level_s`, longer if it would send fewer than `min_requests` (whose
    quantiles would say little), at most `max_s`."""
    return min(max(level_s, min_requests / rate), max(max_s, level_s))


@dataclass(frozen=True)
class Levels:
    """How long the levels run, and whether the held-out ones are sent twice."""

    level_s: float
    min_requests: int
    held_out_requests: int
    max_s: float
    repeat: bool = False


Repeat = tuple[str, float, str, int, float, float]  # config, share, metric, q, first, second
REPEATED = (("e2e", 50), ("e2e", 95), ("ttft", 50), ("ttft", 95))


def measured(folder: RunFolder) -> dict[tuple[str, int], float]:
    """The repeatability table's quantiles of a measured run (ms)."""
    records = folder.records()
    return {
        (m, q): float(np.percentile(metric_samples(records, m), q)) * 1000.0 for m, q in REPEATED
    }


def run_config(kind: str, slots: int, out: Path, levels: Levels) -> None:
    """Measure one configuration: its run folders go to `out` (capacity, staircase, a folder
    per level, and `<level>-repeat` with --repeat)."""
    level_s = levels.level_s
    with engine(kind, slots) as (url, extra):
        base = workload(slots, level_s, extra)
        closed = {
            "arrival": {
                "type": "closed-users",
                "users": 2 * slots,
                "think_time": {"dist": "constant", "value": 0},
            },
            "duration_s": level_s,
            "seed": 10,
        }
        capacity_level = level(base, closed)
        target = url_or_reference(url, capacity_level)  # the same target for every level
        cap = run_load(capacity_level, "fidelity", target, out=out / "capacity", progress=False)
        capacity = cap.summary.throughput
        print(f"{kind} {slots} slots: capacity {capacity:.2f} req/s", file=sys.stderr)
        # as `surgecast calibrate --scenario` does: a staircase holds every batch size, so the
        # fit measures each rather than extrapolating to the large ones
        stairs = level(base, {"rate": 1.0, "duration_s": 1.0, "seed": 99})
        print(f"staircase: {slots} requests at once, stepping down to 1", file=sys.stderr)
        run_load(
            stairs,
            "fidelity",
            target,
            out=out / "staircase",
            progress=False,
            plan=staircase(stairs, slots),
        )
        traffics: dict[float, dict[str, float]] = {}
        seeds = {share: 20 + i for i, share in enumerate((*FIT, *HELD_OUT))}
        for share in INTERLEAVED:
            rate = share * capacity
            wanted = levels.min_requests if share in FIT else levels.held_out_requests
            seconds = level_seconds(rate, level_s, wanted, levels.max_s)
            print(f"level {share:.0%}: {rate:.3g} req/s for {seconds:.0f} s", file=sys.stderr)
            traffics[share] = {"rate": rate, "duration_s": seconds, "seed": seeds[share]}
            scenario = level(base, traffics[share])
            run_load(scenario, "fidelity", target, out=out / f"{share:.2f}", progress=False)
        for share in HELD_OUT if levels.repeat else ():  # the same plan again: the noise floor
            print(f"level {share:.0%} again, the same plan", file=sys.stderr)
            again = out / f"{share:.2f}-repeat"
            run_load(
                level(base, traffics[share]),
                "fidelity",
                target,
                out=again,
                progress=False,
            )


def analyse(kind: str, slots: int, out: Path) -> tuple[list[Result], list[Repeat]]:
    """Calibrate on the kept light levels and the staircase in `out`, back-test the held-out
    levels, and compare each repeated level with its first run."""
    folders = {share: RunFolder(out / f"{share:.2f}") for share in (*FIT, *HELD_OUT)}
    staircase_run = RunFolder(out / "staircase")
    calibration = calibrate_runs([*(folders[s] for s in FIT), staircase_run], max_num_seqs=slots)
    runs = {"capacity": RunFolder(out / "capacity"), "staircase": staircase_run} | {
        f"{s:.0%}": folders[s] for s in INTERLEAVED
    }
    speed = ", ".join(  # the engine's speed drifting through the benchmark shows here
        f"{name} {step_time_ratio(f.records(), calibration.fit.cost()) or float('nan'):.3f}"
        for name, f in runs.items()
    )
    print(f"{kind} {slots} slots: step time over the fit's, in run order: {speed}", file=sys.stderr)
    name = f"{kind} {slots} slots"
    results = [
        (name, share, row)
        for share in HELD_OUT
        for row in backtest_run(folders[share], calibration)
    ]
    again = []
    for share in HELD_OUT:
        repeat = out / f"{share:.2f}-repeat"
        if repeat.exists():
            first, second = measured(folders[share]), measured(RunFolder(repeat))
            again += [(name, share, m, q, first[(m, q)], second[(m, q)]) for m, q in REPEATED]
    return results, again


def repeat_table(repeats: list[Repeat]) -> str:
    """How far the same plan sent twice to the same server lands: what no model can beat."""
    rows = [
        [name, f"{share:.0%}", f"{m} p{q}", f"{a:,.4g}", f"{b:,.4g}", f"{100 * (b - a) / a:+.1f}"]
        for name, share, m, q, a, b in repeats
    ]
    table = markdown(["engine", "load", "metric", "first", "repeat", "difference %"], rows)

    def median(metric: str, q: int) -> float:
        diffs = [abs(100 * (b - a) / a) for _, _, m, q_, a, b in repeats if (m, q_) == (metric, q)]
        return statistics.median(diffs) if diffs else float("nan")

    return (
        f"{table}\nsame plan twice, median |difference|: E2E p50 {median('e2e', 50):.1f}%, "
        f"E2E p95 {median('e2e', 95):.1f}%, TTFT p95 {median('ttft', 95):.1f}%"
    )


def table(results: list[Result]) -> str:
    headers = [
        "engine",
        "load",
        "basis",
        "metric",
        "measured",
        "predicted",
        "error %",
        "90% interval",
        "inside",
    ]
    return markdown(
        headers,
        [
            [
                config,
                f"{share:.0%}",
                r.basis,
                f"{r.metric} p{r.quantile}" if r.quantile else r.metric,
                f"{r.measured:,.4g}",
                f"{r.predicted:,.4g}",
                f"{r.error_pct:+.1f}",
                f"{r.low:,.4g} - {r.high:,.4g}",
                "yes" if r.inside else "NO",
            ]
            for config, share, r in results
        ],
    )


def aim(rows: list[BacktestRow]) -> str:
    def median_error(metric: str, quantile: int) -> float:
        errors = [abs(r.error_pct) for r in rows if (r.metric, r.quantile) == (metric, quantile)]
        return statistics.median(errors) if errors else float("nan")

    e50, e95, t95 = median_error("e2e", 50), median_error("e2e", 95), median_error("ttft", 95)
    inside = sum(r.inside for r in rows) / len(rows) if rows else 0.0
    met = e50 <= 5 and e95 <= 5 and t95 <= 10 and inside >= 0.9
    return (
        f"median |error|: E2E p50 {e50:.1f}%, E2E p95 {e95:.1f}% (aim <= 5%), TTFT p95 "
        f"{t95:.1f}% (aim <= 10%); inside the 90% interval {inside:.0%} (aim >= 90%): "
        + ("aim met" if met else "aim NOT met")
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--engine", choices=("llama-server", "vllm", "reference"), default="llama-server"
    )
    p.add_argument("--slots", default="8,1", help="slot counts (-np, --max-num-seqs), e.g. 8,1")
    p.add_argument("--level-s", type=float, default=40.0, help="seconds per load level, at least")
    p.add_argument(
        "--min-requests",
        type=int,
        default=40,
        help="a level lasts long enough to send about this many requests (default 40) ...",
    )
    p.add_argument(
        "--held-out-requests",
        type=int,
        default=200,
        help="... and a held-out level this many (default 200: a p95 of fewer moves a lot "
        "from run to run)",
    )
    p.add_argument("--max-level-s", type=float, default=300.0, help="... up to this many seconds")
    p.add_argument(
        "--keep", metavar="DIR", help="keep the run folders here (default: a temporary folder)"
    )
    p.add_argument(
        "--from",
        dest="kept",
        metavar="DIR",
        help="no engine: calibrate and back-test the run folders an earlier --keep DIR kept "
        "(after a change to the model, on the same measurements)",
    )
    p.add_argument(
        "--repeat",
        action="store_true",
        help="send each held-out level's plan a second time and print how far the two runs "
        "differ: the noise floor no model can beat on this machine",
    )
    return p


def main() -> int:
    p = parser()
    a = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the engine's context manager stops its processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    results: list[Result] = []
    repeats: list[Repeat] = []
    levels = Levels(a.level_s, a.min_requests, a.held_out_requests, a.max_level_s, a.repeat)
    with contextlib.ExitStack() as stack:
        tmp = a.kept or a.keep or stack.enter_context(tempfile.TemporaryDirectory())
        for slots in (int(s) for s in a.slots.split(",")):
            out = Path(tmp) / f"{a.engine}-np{slots}"
            if a.kept and not (out / "staircase").is_dir():
                p.error(f"--from {a.kept}: {out} holds no kept benchmark (no staircase folder)")
            if not a.kept:
                run_config(a.engine, slots, out, levels)
            rows, again = analyse(a.engine, slots, out)
            results += rows
            repeats += again
    print(table(results))
    print(aim([r for _, _, r in results]))
    if repeats:
        print(repeat_table(repeats))
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
