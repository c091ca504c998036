"""NVML telemetry under a known GPU load (needs a GPU and torch): idle, busy, idle again.

Samples every GPU through surgecast's own `TelemetryRecorder`/`NvmlSampler` while a bf16 matmul
loop runs for a few seconds, and prints one row per phase beside torch's own view of memory.
Run on a GPU machine: `python benchmarks/gpu_telemetry.py [OUT.jsonl]`.
"""

from __future__ import annotations

import io
import json
import sys
import threading
import time

import torch

from loadgen.telemetry import NvmlSampler, TelemetryRecorder


def _load(stop: threading.Event) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    while not stop.is_set():
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()


def main() -> None:
    sampler = NvmlSampler()
    if not sampler.available:
        sys.exit(f"no GPU: {sampler.error}")
    print("devices:", sampler.devices)
    out = io.StringIO()
    recorder = TelemetryRecorder([sampler], out)
    t0 = time.monotonic()
    phases: list[tuple[str, float, float]] = []

    def phase(name: str, seconds: float) -> None:
        start = time.monotonic() - t0
        while time.monotonic() - t0 < start + seconds:
            recorder.tick(time.monotonic() - t0)
            time.sleep(0.25)
        phases.append((name, start, time.monotonic() - t0))

    phase("idle", 2.0)
    stop = threading.Event()
    worker = threading.Thread(target=_load, args=(stop,))
    worker.start()
    time.sleep(1.0)  # let the loop reach steady state
    free, total = torch.cuda.mem_get_info()
    phase("busy", 4.0)
    stop.set()
    worker.join()
    phase("idle again", 2.0)
    recorder.close()
    samples = [json.loads(line) for line in out.getvalue().splitlines()]
    print(f"torch during load: {(total - free) / 2**30:.2f} GiB used of {total / 2**30:.1f} GiB")
    print("| phase | samples | gpu util % (min-max) | mem used GiB | power W | SM MHz |")
    print("|---|---|---|---|---|---|")
    for name, a, b in phases:
        gpus = [s["gpus"][0] for s in samples if a <= s["t"] <= b]
        util = [g.get("gpu_util_pct", float("nan")) for g in gpus]
        mem = max(g.get("mem_used_bytes", 0) for g in gpus) / 2**30
        power = max(g.get("power_w", float("nan")) for g in gpus)
        clock = max(g.get("sm_clock_mhz", float("nan")) for g in gpus)
        print(
            f"| {name} | {len(gpus)} | {min(util):.0f}-{max(util):.0f} | {mem:.2f} "
            f"| {power:.0f} | {clock:.0f} |"
        )
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w", encoding="utf-8") as f:
            f.write(out.getvalue())


if __name__ == "__main__":
    main()
