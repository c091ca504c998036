"""Deployments as data: `surgecast catalog` (the GPUs, models and number formats known),
`surgecast memory` (what a model takes on a GPU, in GiB, and the KV cache that is left) and
`surgecast hardware` (the machine at hand measured as a catalog entry)."""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError

from scenarios.base import validation_messages
from scenarios.deployment_spec import Deployment
from simulator.deploy.catalog import Catalog, load_catalog
from simulator.deploy.memory import MemoryPlan, memory_plan
from surgecast.cli.args import count, positive
from surgecast.cli.exits import EXIT_OK, BadInput
from surgecast.console import out, say_stderr
from surgecast.files import write_whole
from surgecast.hardware import THREAD_VARIABLES, Measured, catalog_entry
from surgecast.tables import markdown

Subparsers = argparse._SubParsersAction
DEFAULTS = Deployment(model="-", gpu="-")


def register(sub: Subparsers) -> None:
    _add_catalog(sub)
    _add_memory(sub)
    _add_hardware(sub)


def _catalog_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--catalog",
        metavar="FILE",
        action="append",
        default=[],
        help="a catalog file of your own (GPUs, models, number formats) over the shipped one; "
        "repeat for several; see `surgecast catalog`",
    )


def _add_catalog(sub: Subparsers) -> None:
    c = sub.add_parser(
        "catalog",
        help="list the GPUs, models and number formats deployments are made of",
        description="The shipped catalog (simulator/deploy/data/catalog.yaml) with your own "
        "files over it: an entry of the same name replaces the shipped one.",
    )
    _catalog_flag(c)
    c.add_argument("--sources", action="store_true", help="show where each figure comes from")
    c.set_defaults(func=cmd_catalog)


def _add_memory(sub: Subparsers) -> None:
    m = sub.add_parser(
        "memory",
        help="a model's memory on a GPU in GiB: weights, activations, the KV cache left",
        description="Per GPU of a replica: weights, activation peak and overhead within the "
        "GPU's memory x gpu_memory_utilization, and the KV cache left, in blocks, tokens, the "
        "longest context and the largest batch. Comma lists compare options.",
    )
    m.add_argument("model", help="a model of the catalog (name or alias)")
    m.add_argument("gpu", help="a GPU of the catalog (name or alias)")
    m.add_argument("--weights", default="bf16", help="weight formats, e.g. bf16,fp8,int4")
    m.add_argument("--kv-cache", default="bf16", help="KV-cache formats, e.g. bf16,fp8")
    m.add_argument("--tp", default="1,2,4,8", help="tensor-parallel degrees (default 1,2,4,8)")
    m.add_argument(
        "--context", type=count, default=4096, help="tokens a sequence holds, for the batch column"
    )
    m.add_argument("--max-num-seqs", type=count, default=DEFAULTS.max_num_seqs)
    m.add_argument("--max-num-batched-tokens", type=count, default=DEFAULTS.max_num_batched_tokens)
    m.add_argument(
        "--gpu-memory-utilization", type=positive, default=DEFAULTS.gpu_memory_utilization
    )
    m.add_argument("--block-size", type=count, default=DEFAULTS.block_size)
    m.add_argument(
        "--overhead-gib",
        type=float,
        default=DEFAULTS.overhead_gib,
        help="per GPU beyond weights and activations (CUDA context, buffers, graphs)",
    )
    m.add_argument("--kv-cache-gib", type=positive, help="KV space given outright (vLLM on CPU)")
    m.add_argument("--json", action="store_true", help="print the plans as JSON")
    _catalog_flag(m)
    m.set_defaults(func=cmd_memory)


def _add_hardware(sub: Subparsers) -> None:
    h = sub.add_parser(
        "hardware",
        help="measure this machine (matmul FLOP/s, memory GB/s) as a catalog GPU entry",
        description="Short micro-benchmarks of the machine at hand (about 10 s): the best of "
        "a few square matmuls (float32 numpy on the CPU; bfloat16 torch on a CUDA device) and "
        "of reads of a large array. Written as a catalog file (--out): name its GPU in a "
        "scenario's deployments.measured to calibrate on this machine and forecast others.",
    )
    h.add_argument("--name", default="this-machine", help="the entry's name (default %(default)s)")
    h.add_argument("--device", default="cpu", help="cpu (numpy), or a torch device such as cuda:0")
    h.add_argument(
        "--threads",
        type=count,
        help="the CPU's BLAS threads (default: the BLAS's own; set as the engine will run)",
    )
    h.add_argument("--size", type=count, default=2048, help="matmul size n (n x n)")
    h.add_argument("--read-mib", type=count, default=256, help="MiB the bandwidth test reads")
    h.add_argument("--repeats", type=count, default=5, help="timed repeats; the best is kept")
    h.add_argument(
        "--price", type=float, default=0.0, help="what an hour of this machine costs, USD"
    )
    h.add_argument("--out", type=Path, metavar="FILE", help="write the catalog file here")
    h.add_argument("--json", action="store_true", help="print the measurement as JSON")
    h.set_defaults(func=cmd_hardware)


def cmd_hardware(a: argparse.Namespace) -> int:
    if a.device != "cpu" and importlib.util.find_spec("torch") is None:
        raise BadInput(f"--device {a.device}: needs torch in this environment (pip install torch)")
    if a.price < 0:
        raise BadInput(f"--price: at least 0, got {a.price}")
    measured = _measure(a)
    entry = catalog_entry(measured, a.price)
    if a.json:
        out(json.dumps({"measured": measured.__dict__, "gpus": {a.name: entry}}, indent=2))
    else:
        rates = [measured.matmul_flops / 1e9, measured.memory_bytes_s / 1e9]
        rows: list[list[object]] = [[a.name, measured.name, measured.threads or "-", *rates]]
        out(markdown(["entry", "device", "threads", "matmul GFLOP/s", "read GB/s"], rows))
    if a.out:
        text = yaml.safe_dump({"gpus": {a.name: entry}}, sort_keys=False)
        write_whole(a.out, f"# {entry['source']}\n{text}")
        say_stderr(
            f"wrote {a.out}: use it with --catalog {a.out}, and in a scenario as "
            f"deployments: {{catalog: [{a.out}], measured: {{gpu: {a.name}, model: ...}}}}"
        )
    return EXIT_OK


def _measure(a: argparse.Namespace) -> Measured:
    """The micro-benchmarks in a child, whose BLAS threads are set before numpy loads."""
    env = dict(os.environ)
    if a.threads:
        env |= dict.fromkeys(THREAD_VARIABLES, str(a.threads))
    command = [sys.executable, "-m", "surgecast.hardware", "--device", a.device]
    command += ["--size", str(a.size), "--read-mib", str(a.read_mib), "--repeats", str(a.repeats)]
    say_stderr(f"measuring {a.device}: {a.size}x{a.size} matmuls, {a.read_mib} MiB reads ...")
    child = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if child.returncode != 0:
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInput(f"the micro-benchmark on {a.device} failed: {last}")
    return Measured(**json.loads(child.stdout))


def cmd_catalog(a: argparse.Namespace) -> int:
    catalog = load_catalog(a.catalog)
    out(_gpu_table(catalog, a.sources))
    out("")
    out(_model_table(catalog, a.sources))
    out("")
    formats = catalog.number_formats.items()
    out(
        markdown(
            ["format", "bytes", "multiplies on"], [[n, f.bytes, f.compute] for n, f in formats]
        )
    )
    return EXIT_OK


def _gpu_table(catalog: Catalog, sources: bool) -> str:
    headers = ["gpu", "vendor", "GiB", "GB/s", "bf16 TFLOPS", "fp8", "int8", "link GB/s", "$/h"]
    rows: list[list[object]] = []
    for name, g in catalog.gpus.items():
        rates = [g.tflops.get(k, float("nan")) for k in ("bf16", "fp8", "int8")]
        row: list[object] = [name, g.vendor, g.memory_gib, g.memory_bandwidth_gbs, *rates]
        rows.append(
            [*row, g.interconnect_gbs, g.price_per_hour_usd] + ([g.source] if sources else [])
        )
    return markdown(headers + (["source"] if sources else []), rows)


def _model_table(catalog: Catalog, sources: bool) -> str:
    headers = ["model", "params (B)", "active (B)", "layers", "hidden", "heads / kv", "context"]
    rows: list[list[object]] = []
    for name, m in catalog.models.items():
        active = m.per_token_parameters / 1e9
        row: list[object] = [name, m.parameters / 1e9, active, m.layers, m.hidden_size]
        row += [f"{m.attention_heads} / {m.kv_heads}", m.max_context]
        rows.append(row + ([m.source] if sources else []))
    return markdown(headers + (["source"] if sources else []), rows)


def cmd_memory(a: argparse.Namespace) -> int:
    catalog = load_catalog(a.catalog)
    plans = [memory_plan(d, catalog) for d in _deployments(a, catalog)]
    if a.json:
        out(json.dumps([_as_dict(p, a.context) for p in plans], indent=2))
        return EXIT_OK
    out(_memory_table(plans, a.context))
    for p in plans:
        if not p.fits:
            out(f"- {p.deployment.label()}: {p.why}")
    return EXIT_OK


def _deployments(a: argparse.Namespace, catalog: Catalog) -> list[Deployment]:
    """Every combination the flags list, each checked against the catalog."""
    try:  # the catalog's own names in what is printed, whatever case or alias was typed
        model, gpu = catalog.named("model", a.model), catalog.named("gpu", a.gpu)
    except KeyError as e:
        raise BadInput(e.args[0]) from None
    lists = [_names(a.weights, "--weights", catalog), _names(a.kv_cache, "--kv-cache", catalog)]
    try:
        degrees = [count(t) for t in _split(a.tp, "--tp")]
    except argparse.ArgumentTypeError as e:
        raise BadInput(f"--tp: {e}") from None
    settings = {
        "max_num_seqs": a.max_num_seqs,
        "max_num_batched_tokens": a.max_num_batched_tokens,
        "gpu_memory_utilization": a.gpu_memory_utilization,
        "block_size": a.block_size,
        "overhead_gib": a.overhead_gib,
        "kv_cache_gib": a.kv_cache_gib,
    }
    chosen = []
    for weights, kv, tp in itertools.product(*lists, degrees):
        fields = {"model": model, "gpu": gpu, "weights": weights, "kv_cache": kv}
        try:
            chosen.append(Deployment(**fields, tensor_parallel=tp, **settings))
        except ValidationError as e:
            raise BadInput("; ".join(validation_messages(e, settings))) from None
    return chosen


def _split(text: str, flag: str) -> list[str]:
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise BadInput(f"{flag}: a comma-separated list, got {text!r}")
    return parts


def _names(text: str, flag: str, catalog: Catalog) -> list[str]:
    try:
        return [catalog.named("number format", n) for n in _split(text, flag)]
    except KeyError as e:
        raise BadInput(f"{flag}: {e.args[0]}") from None


def _memory_table(plans: list[MemoryPlan], context: int) -> str:
    headers = ["deployment", "weights GiB", "activations", "overhead", "KV GiB", "KV tokens"]
    headers += ["longest context", f"batch at {context:,}", "fits"]
    rows = []
    for p in plans:
        kv = [p.kv_cache_gib, p.kv_tokens, p.max_context, p.max_batch(context)]
        if not p.fits:
            kv = [p.kv_cache_gib, 0, 0, 0]
        row: list[object] = [p.deployment.label(), p.weights_gib, p.activations_gib, p.overhead_gib]
        rows.append([*row, *kv, "yes" if p.fits else "no"])
    return "memory per GPU of one replica\n\n" + markdown(headers, rows)


def _as_dict(p: MemoryPlan, context: int) -> dict[str, object]:
    return {
        "deployment": p.deployment.model_dump(),
        "fits": p.fits,
        "why": p.why or None,
        "per_gpu_gib": {
            "budget": p.budget_gib,
            "weights": p.weights_gib,
            "activations": p.activations_gib,
            "overhead": p.overhead_gib,
            "kv_cache": p.kv_cache_gib,
        },
        "kv_bytes_per_token": p.kv_bytes_per_token,
        "blocks": p.blocks,
        "kv_tokens": p.kv_tokens,
        "max_context": p.max_context if p.fits else 0,
        f"max_batch_at_{context}": p.max_batch(context) if p.fits else 0,
    }
