"""Transfer on a real engine: calibrate on one llama-server deployment, predict held-out others.

    python benchmarks/transfer.py [--held-out small/q4_0,narrow/f16,narrow/q4_0] [--slots 4]
                                  [--keep DIR] [--from DIR]

This CPU stands in for a GPU. A micro-benchmark measures it first: memory bandwidth (numpy
reading a 256 MiB array) and, per weight type (f16, q8_0, q4_0), the FLOP/s llama.cpp reaches
on a 2-layer probe model that is none of the deployments, in decode (one step of `slots`
sequences against one of one) and in prefill (a 512-token prompt). These go into a catalog file
(a "gpu", the models' real shapes, the formats: f16 2 bytes, q8_0 34 bytes per 32 values, q4_0
18 per 32) that the first-principles step time (`simulator.deploy.steptime`) prices
deployments with.

Each deployment (model shape / weight type, e.g. small/f16) is measured as fidelity.py does:
a capacity run (closed-loop users, twice the slots), a staircase and a light level (15% of
capacity), which calibrate it; a held-out one also gets open-loop Poisson levels at 30%, 55%
and 80% of its own capacity. The base deployment's calibrated step cost is carried to each
held-out one (`carry`, by the ratios of their first-principles costs) and replays the held-out
levels' send times; so does each held-out deployment's own calibration (the floor: what
calibrating there would give). Printed: measured and predicted TTFT and E2E p50/p95, errors and
90% intervals, the floor's error, and the error with the catalog's rates alone (q4_0 at q8_0's
int8 rate, prefill at decode's).

The measured rates per weight type and phase are the per-format efficiency this needs on a
CPU: a GPU datasheet's one rate per matrix unit does not describe llama.cpp, whose q4_0 kernel
(repacked for AVX-512) outruns its q8_0 one, and whose prefill (a matrix product) outruns its
decode (a few rows at a time). The engine runs one thread: under other work on a shared
machine, two threads wait for each other at every operation.
Loopback only; the engine is started and stopped here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import yaml
from fidelity import level, level_seconds, workload

from scenarios.deployment_spec import Deployment
from simulator.deploy.catalog import Catalog, load_catalog
from simulator.deploy.steptime import carry, deployment_cost, step_work
from simulator.engine.stepcost import CostModel, DecodeTableCost, RooflineCost, StepCost
from simulator.fit.backtest import BacktestRow, backtest
from simulator.fit.calibrate import Calibration, Fit
from simulator.fit.speed import step_time_ratio
from surgecast.calibration import calibrate_runs, limits_from_runs
from surgecast.live_run import run_load
from surgecast.rundir import RunFolder
from surgecast.sweep import staircase
from surgecast.tables import markdown
from targets.gguf_model import SHAPES, WEIGHTS, ModelShape, ensure_model, vocabulary
from targets.llama_build import ensure_server
from targets.llama_server import LlamaServer, LlamaServerConfig
from targets.reference_launch import url_or_reference

BASE = "small/f16"
HELD_OUT = ("small/q4_0", "narrow/f16", "narrow/q4_0")  # a weight type, a shape, both
FIT = 0.15
LEVELS = (0.30, 0.55, 0.80)
GPU = "this-cpu"
BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # a block of 32 values and its scale
COMPUTE = {"f16": "bf16", "q8_0": "int8", "q4_0": "int8"}  # q4_0 x q8_0: integer dot products
METRICS = (("ttft", 50), ("ttft", 95), ("e2e", 50), ("e2e", 95))
Rates = dict[str, dict[str, float]]  # weight type -> {"decode": FLOP/s, "prefill": FLOP/s}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def split(key: str) -> tuple[str, str]:
    shape, weights = key.split("/")
    if shape not in SHAPES or weights not in WEIGHTS:
        raise SystemExit(f"deployment {key!r}: expected SHAPE/WEIGHTS of {list(SHAPES)}/{WEIGHTS}")
    return shape, weights


# --- the device: a micro-benchmark and the catalog file it writes


def memory_gbs() -> float:
    """Read bandwidth: the best of five sums of a 256 MiB array (one thread, as the engine)."""
    a = np.ones(1 << 26, dtype=np.float32)
    best = min(_timed(a.sum) for _ in range(5))
    return a.nbytes / best / 1e9


def _timed(f: Callable[[], object]) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def completion(root: str, prompt_tokens: int, n: int) -> dict[str, float]:
    """llama-server's own timings of one request (ms; prompt and predicted token counts)."""
    body: dict[str, object] = {"prompt": "a " * prompt_tokens, "n_predict": n}
    body |= {"ignore_eos": True, "cache_prompt": False}
    headers = {"Content-Type": "application/json"}
    request = urllib.request.Request(root + "/completion", json.dumps(body).encode(), headers)
    with urllib.request.urlopen(request, timeout=300) as r:
        return dict(json.loads(r.read())["timings"])


def decode_step_ms(root: str, batch: int) -> float:
    """The time of one decode step of `batch` sequences (the median request's ms per token)."""
    with concurrent.futures.ThreadPoolExecutor(batch) as pool:
        timings = list(pool.map(lambda _: completion(root, 16, 64), range(batch)))
    return statistics.median(t["predicted_per_token_ms"] for t in timings)


def probe_rates(weights: str, slots: int, threads: int, flops_per_token: float) -> dict[str, float]:
    """FLOP/s llama.cpp reaches on the probe model: decode (a step's time per sequence beyond
    the first) and prefill; each the best of three, the least disturbed by other work."""
    config = LlamaServerConfig(
        ensure_server(build=True), ensure_model("probe", weights=weights), slots, 1024 * slots
    )
    with LlamaServer(dataclasses.replace(config, threads=threads)) as server:
        root = server.base_url.removesuffix("/v1")
        completion(root, 16, 4)  # warm
        one, full = (min(decode_step_ms(root, b) for _ in range(3)) for b in (1, slots))
        per_seq = max(full - one, 1e-3) / (slots - 1)
        prefill = min(
            (t := completion(root, 512, 1))["prompt_ms"] / t["prompt_n"] for _ in range(3)
        )
    return {"decode": flops_per_token / per_seq * 1e3, "prefill": flops_per_token / prefill * 1e3}


def model_entry(shape: ModelShape) -> dict[str, object]:
    """A catalog `models:` entry of the random GGUF model's real shape."""
    head_dim = shape.hidden // shape.heads
    kv = shape.kv_heads * head_dim
    vocab = len(vocabulary()[0])
    per_layer = shape.hidden * (2 * shape.hidden + 2 * kv) + 3 * shape.hidden * shape.ffn
    return {
        "parameters": shape.layers * per_layer + 2 * vocab * shape.hidden,
        "layers": shape.layers,
        "hidden_size": shape.hidden,
        "attention_heads": shape.heads,
        "kv_heads": shape.kv_heads,
        "head_dim": head_dim,
        "intermediate_size": shape.ffn,
        "vocab_size": vocab,
        "max_context": shape.context,
        "source": f"targets/gguf_model.py SHAPES[{shape.name!r}]",
    }


def catalog_data(memory: float, rates: Rates) -> dict[str, object]:
    """The catalog file: this CPU as a GPU (the decode rates of f16 and q8_0 as its bf16 and
    int8 throughput), the models' shapes, the weight types and llama-server's f16 KV cache."""
    formats = {w: {"bytes": BYTES[w], "compute": COMPUTE[w], "source": "ggml"} for w in WEIGHTS}
    gpu = {
        "vendor": "cpu",
        "memory_gib": 16,
        "memory_bandwidth_gbs": round(memory, 2),
        "tflops": {c: rates[w]["decode"] / 1e12 for w, c in (("f16", "bf16"), ("q8_0", "int8"))},
        "interconnect_gbs": 0,
        "load_bandwidth_gbs": 1,
        "price_per_hour_usd": 0,
        "source": "benchmarks/transfer.py micro-benchmark, one thread",
    }
    return {
        "number_formats": formats,
        "gpus": {GPU: gpu},
        "models": {name: model_entry(shape) for name, shape in SHAPES.items()},
    }


def deployment(key: str) -> Deployment:
    shape, weights = split(key)
    return Deployment(model=shape, gpu=GPU, weights=weights, kv_cache="f16")


def measure_device(out: Path, slots: int, threads: int) -> None:
    """Probe the device and write `out/device.json` (bandwidth, rates per weight type)."""
    say("device: memory bandwidth ...")
    memory = memory_gbs()
    flops = step_work(deployment("probe/f16"), catalog_of(out, memory, {})).flops_per_token
    rates = {}
    for w in WEIGHTS:
        say(f"device: llama.cpp's {w} rates on the probe model ...")
        rates[w] = probe_rates(w, slots, threads, flops)
    (out / "device.json").write_text(json.dumps({"memory_gbs": memory, "rates": rates}))


def catalog_of(out: Path, memory: float, rates: Rates) -> Catalog:
    """The shipped catalog with this device's file (written to `out`) over it."""
    filled = {w: rates.get(w, {"decode": 1e9, "prefill": 1e9}) for w in WEIGHTS}
    path = out / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog_data(memory, filled)))
    return load_catalog([path])


# --- carrying a calibration to another deployment


def priced(d: Deployment, catalog: Catalog, rate: float | None) -> RooflineCost:
    """The first-principles cost, its matmuls at `rate` FLOP/s (None: the catalog's)."""
    cost = deployment_cost(d, catalog)
    if rate is None:
        return cost
    flops = step_work(d, catalog).flops_per_token
    return dataclasses.replace(cost, per_token_s=flops / rate)


def carrier(
    base: Deployment, held: Deployment, catalog: Catalog, rates: Rates | None
) -> Callable[[CostModel], CostModel]:
    """Carries a cost of `base` to `held`: decode at the decode rates' ratio, prefill at the
    prefill rates' (rates None: the catalog's alone, one rate per matrix unit)."""

    def costs(phase: str) -> tuple[RooflineCost, RooflineCost]:
        pick = (lambda d: rates[d.weights][phase]) if rates else (lambda d: None)
        return priced(base, catalog, pick(base)), priced(held, catalog, pick(held))

    decode, prefill = costs("decode"), costs("prefill")

    def move(cost: CostModel) -> CostModel:
        moved = carry(cost, *decode)
        if isinstance(moved, StepCost | DecodeTableCost):
            other = carry(cost, *prefill)
            assert isinstance(other, StepCost | DecodeTableCost)
            return dataclasses.replace(moved, per_prefill_token_s=other.per_prefill_token_s)
        return moved  # a roofline prices prefill and decode tokens alike

    return move


def carried_fit(fit: Fit, move: Callable[[CostModel], CostModel]) -> Fit:
    """The fit with its linear terms (and their covariance), its chosen model and its step
    residuals carried: each term scaled as `move` scales it."""
    old, new = fit.linear(), move(fit.linear())
    assert isinstance(new, StepCost)
    terms = ("base_s", "per_decode_seq_s", "per_prefill_token_s")
    ratios = [getattr(new, t) / getattr(old, t) if getattr(old, t) else 1.0 for t in terms]
    scale = np.diag([1.0, *ratios])
    typical = tuple(map(round, fit.typical_step))
    model = fit.cost()
    step = move(model).duration(*typical) / model.duration(*typical)
    return dataclasses.replace(
        fit,
        values=scale @ fit.values,
        covariance=scale @ fit.covariance @ scale,
        model=None if fit.model is None else move(fit.model),
        residual_quantiles_s=tuple(q * step for q in fit.residual_quantiles_s),
    )


def carried(
    calibration: Calibration, move: Callable[[CostModel], CostModel], held: Path
) -> Calibration:
    """The base calibration carried to a held-out deployment, with its engine limits."""
    limits = limits_from_runs([RunFolder(held / "capacity")])
    engine = calibration.engine.with_cost(move(calibration.engine.cost))
    if limits is not None:
        engine = dataclasses.replace(
            engine, max_num_seqs=limits.max_num_seqs, kv_cache_tokens=limits.kv_cache_tokens
        )
    return dataclasses.replace(calibration, engine=engine, fit=carried_fit(calibration.fit, move))


# --- measuring deployments


@contextlib.contextmanager
def engine(key: str, slots: int, threads: int) -> Iterator[str]:
    shape, weights = split(key)
    model = ensure_model(shape, weights=weights)
    config = LlamaServerConfig(ensure_server(build=True), model, slots, 2048 * slots)
    with LlamaServer(dataclasses.replace(config, threads=threads)) as server:
        yield server.base_url


def measure(key: str, out: Path, a: argparse.Namespace, held_out: bool) -> None:
    """Run one deployment's capacity, staircase and levels into `out` (fidelity.py's recipe)."""
    slots = a.slots
    with engine(key, slots, a.threads) as url:
        base = workload(slots, a.level_s, {"ignore_eos": True})
        base["workload"] = {
            "prompt_tokens": {"dist": "uniform", "low": 32, "high": 160},
            "output_tokens": {"dist": "uniform", "low": 16, "high": 64},
        }
        think = {"dist": "constant", "value": 0}
        closed = {"type": "closed-users", "users": 2 * slots, "think_time": think}
        capacity_level = level(base, {"arrival": closed, "duration_s": a.level_s, "seed": 10})
        target = url_or_reference(url, capacity_level)
        cap = run_load(capacity_level, "transfer", target, out=out / "capacity", progress=False)
        capacity = cap.summary.throughput
        say(f"{key}: capacity {capacity:.2f} req/s")
        stairs = level(base, {"rate": 1.0, "duration_s": 1.0, "seed": 99})
        plan = staircase(stairs, slots)
        run_load(stairs, "transfer", target, out=out / "staircase", progress=False, plan=plan)
        for i, share in enumerate((FIT, *LEVELS) if held_out else (FIT,)):
            rate = share * capacity
            wanted = a.fit_requests if share == FIT else a.held_out_requests
            seconds = level_seconds(rate, a.level_s, wanted, a.max_level_s)
            say(f"{key}: level {share:.0%}, {rate:.3g} req/s for {seconds:.0f} s")
            scenario = level(base, {"rate": rate, "duration_s": seconds, "seed": 20 + i})
            run_load(scenario, "transfer", target, out=out / f"{share:.2f}", progress=False)


def calibrate_here(out: Path, slots: int) -> Calibration:
    folders = [RunFolder(out / name) for name in ("capacity", "staircase", f"{FIT:.2f}")]
    return calibrate_runs(folders, max_num_seqs=slots)


# --- the table


Row = tuple[str, float, BacktestRow, float, float]  # deployment, load, row, floor and catalog %


def replayed(folder: Path, calibration: Calibration) -> dict[tuple[str, int], BacktestRow]:
    rows, _ = backtest(RunFolder(folder).records(), calibration)
    return {(r.metric, r.quantile): r for r in rows if (r.metric, r.quantile) in METRICS}


def diagnose(key: str, folder: Path, carried_cal: Calibration, own: Calibration) -> None:
    """The carried step cost against the deployment's own fit at its typical step (the transfer's
    error, free of queueing), and each run's step time over its own fit (the engine's drift)."""
    typical = tuple(map(round, own.fit.typical_step))
    ratio = carried_cal.engine.cost.duration(*typical) / own.engine.cost.duration(*typical)
    runs = ("capacity", "staircase", *(f"{s:.2f}" for s in (FIT, *LEVELS)))
    speed = ", ".join(
        f"{name} {step_time_ratio(RunFolder(folder / name).records(), own.fit.cost()) or 0:.2f}"
        for name in runs
    )
    say(f"{key}: carried step over its own fit at {typical}: {ratio:.2f}; runs' speed {speed}")


def held_out_rows(
    key: str, out: Path, cals: tuple[Calibration, Calibration, Calibration]
) -> list[Row]:
    """Each level's metrics: the carried calibration's rows, with the floor's and the
    catalog-only carry's errors beside them."""
    carried_cal, floor, catalog_only = cals
    rows = []
    for share in LEVELS:
        folder = out / f"{share:.2f}"
        main, own, plain = (replayed(folder, c) for c in (carried_cal, floor, catalog_only))
        rows += [(key, share, main[m], own[m].error_pct, plain[m].error_pct) for m in METRICS]
    return rows


def table(rows: list[Row]) -> str:
    headers = ["deployment", "load", "metric", "measured ms", "predicted ms", "error %"]
    headers += ["90% interval", "inside", "floor error %", "catalog-only error %"]
    return markdown(
        headers,
        [
            [
                key,
                f"{share:.0%}",
                f"{r.metric} p{r.quantile}",
                f"{r.measured:,.4g}",
                f"{r.predicted:,.4g}",
                f"{r.error_pct:+.1f}",
                f"{r.low:,.4g} - {r.high:,.4g}",
                "yes" if r.inside else "NO",
                f"{floor:+.1f}",
                f"{plain:+.1f}",
            ]
            for key, share, r, floor, plain in rows
        ],
    )


def medians(errors: dict[tuple[str, int], list[float]]) -> tuple[float, float, float]:
    def med(m: str, q: int) -> float:
        values = [abs(e) for e in errors.get((m, q), [])]
        return statistics.median(values) if values else float("nan")

    return med("e2e", 50), med("e2e", 95), med("ttft", 95)


def aim(rows: list[Row]) -> str:
    """The aim on the carried rows, and the same medians for the floor and the catalog alone."""
    lines = []
    for name, pick in (
        ("carried", lambda row: row[2].error_pct),
        ("floor (calibrated on itself)", lambda row: row[3]),
        ("catalog rates alone", lambda row: row[4]),
    ):
        errors: dict[tuple[str, int], list[float]] = {}
        for row in rows:
            errors.setdefault((row[2].metric, row[2].quantile), []).append(pick(row))
        e50, e95, t95 = medians(errors)
        lines.append(
            f"{name}: median |error| E2E p50 {e50:.1f}%, E2E p95 {e95:.1f}%, TTFT p95 {t95:.1f}%"
        )
    e50, e95, t95 = medians(
        {m: [r[2].error_pct for r in rows if (r[2].metric, r[2].quantile) == m] for m in METRICS}
    )
    inside = sum(r[2].inside for r in rows) / len(rows) if rows else 0.0
    met = e50 <= 10 and e95 <= 10 and t95 <= 15 and inside >= 0.9
    lines.append(
        f"aim (carried): E2E p50 and p95 <= 10%, TTFT p95 <= 15%, >= 90% inside: inside "
        f"{inside:.0%}: " + ("aim met" if met else "aim NOT met")
    )
    return "\n".join(lines)


# --- the command


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default=BASE, help=f"the calibrated deployment (default {BASE})")
    p.add_argument(
        "--held-out", default=",".join(HELD_OUT), help="held-out deployments, SHAPE/WEIGHTS,..."
    )
    p.add_argument("--slots", type=int, default=4, help="llama-server -np (default 4)")
    p.add_argument("--threads", type=int, default=1, help="llama-server -t (default 1)")
    p.add_argument("--level-s", type=float, default=20.0, help="seconds per level, at least")
    p.add_argument("--fit-requests", type=int, default=30, help="requests at the 15%% level")
    p.add_argument("--held-out-requests", type=int, default=60, help="requests a held-out level")
    p.add_argument("--max-level-s", type=float, default=90.0, help="seconds per level, at most")
    p.add_argument("--keep", metavar="DIR", help="keep the run folders here")
    p.add_argument(
        "--from", dest="kept", metavar="DIR", help="no engine: analyse what --keep DIR kept"
    )
    return p


def run(a: argparse.Namespace, out: Path) -> list[Row]:
    held = [k for k in a.held_out.split(",") if k]
    for key in (a.base, *held):
        split(key)
    if not a.kept:
        measure_device(out, a.slots, a.threads)
        for key in (a.base, *held):
            say(f"measuring {key}")
            measure(key, out / key.replace("/", "-"), a, held_out=key != a.base)
    device = json.loads((out / "device.json").read_text())
    rates: Rates = device["rates"]
    say(
        f"device: {device['memory_gbs']:.1f} GB/s; GFLOP/s "
        + ", ".join(
            f"{w} decode {r['decode'] / 1e9:.1f} prefill {r['prefill'] / 1e9:.1f}"
            for w, r in rates.items()
        )
    )
    catalog = catalog_of(out, device["memory_gbs"], rates)
    base = calibrate_here(out / a.base.replace("/", "-"), a.slots)
    say(f"{a.base}: calibrated, {base.fit.chosen} step cost, R^2 {base.fit.r2:.3f}")
    rows = []
    for key in held:
        folder = out / key.replace("/", "-")
        src, dst = deployment(a.base), deployment(key)
        cals = (
            carried(base, carrier(src, dst, catalog, rates), folder),
            calibrate_here(folder, a.slots),
            carried(base, carrier(src, dst, catalog, None), folder),
        )
        diagnose(key, folder, cals[0], cals[1])
        rows += held_out_rows(key, folder, cals)
    return rows


def main() -> int:
    p = parser()
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind: the engine is stopped
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        out = Path(a.kept or a.keep or stack.enter_context(tempfile.TemporaryDirectory()))
        out.mkdir(parents=True, exist_ok=True)
        if a.kept and not (out / "device.json").is_file():
            p.error(f"--from {a.kept}: no kept benchmark there (no device.json)")
        rows = run(a, out)
    print(table(rows))
    print(aim(rows))
    print(f"({time.monotonic() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
