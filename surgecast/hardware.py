"""The machine at hand as a catalog GPU entry: its matrix-multiply throughput and memory read
bandwidth, each the best of a few timed repeats of a short micro-benchmark (numpy on the CPU,
torch on a CUDA device when torch is installed). A calibration on this machine then names it
as its GPU, and the forecast carries its measured step cost to catalog GPUs by the ratios of
these figures to theirs (simulator/deploy/steptime.py `carry`).

Run as `python -m surgecast.hardware` it prints the measurement as JSON: `surgecast hardware`
runs it so, in a child whose BLAS threads are set before numpy loads.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
Clock = Callable[[], float]


@dataclass(frozen=True)
class Measured:
    """What the micro-benchmarks reached on one device."""

    device: str  # "cpu" or a torch device ("cuda:0")
    name: str  # the processor's or GPU's own name
    threads: int | None  # the CPU's BLAS threads (None: a GPU)
    matmul_flops: float  # achieved, of square matmuls of `size` in `dtype`
    dtype: str
    size: int
    memory_bytes_s: float  # achieved read bandwidth
    memory_bytes: int  # the device's memory


def best_seconds(
    work: Callable[[], object], repeats: int, clock: Clock = time.perf_counter
) -> float:
    """The shortest of `repeats` timings of `work` (the least disturbed by other work), after
    one untimed warm-up."""
    work()
    times = []
    for _ in range(repeats):
        began = clock()
        work()
        times.append(clock() - began)
    return min(times)


def matmul_flops(n: int, seconds: float) -> float:
    """FLOP/s of an n x n by n x n matmul taking `seconds`: n^2 outputs of n multiply-adds."""
    return 2.0 * n**3 / seconds


def measure_cpu(
    size: int, read_mib: int, repeats: int, clock: Clock = time.perf_counter
) -> Measured:
    """numpy in float32 (its BLAS threads as the environment sets them)."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    matmul = best_seconds(lambda: a @ b, repeats, clock)
    block = np.ones(read_mib << 18, dtype=np.float32)  # MiB of 4-byte values
    read = best_seconds(block.sum, repeats, clock)
    threads = next((int(os.environ[v]) for v in THREAD_VARIABLES if os.environ.get(v)), None)
    return Measured(
        device="cpu",
        name=_cpu_name(),
        threads=threads or os.cpu_count() or 1,
        matmul_flops=matmul_flops(size, matmul),
        dtype="float32",
        size=size,
        memory_bytes_s=block.nbytes / read,
        memory_bytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    )


def measure_torch(device: str, size: int, read_mib: int, repeats: int) -> Measured:
    """torch in bfloat16 on `device`, each timing synchronised."""
    import torch

    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a, b = (torch.randn(size, size, dtype=torch.bfloat16, device=dev) for _ in range(2))
    block = torch.ones(read_mib << 19, dtype=torch.bfloat16, device=dev)  # MiB of 2-byte values

    def synced(f: Callable[[], object]) -> Callable[[], None]:
        return lambda: (f(), sync())[-1]

    matmul = best_seconds(synced(lambda: a @ b), repeats)
    read = best_seconds(synced(block.sum), repeats)
    cuda = dev.type == "cuda"
    props = torch.cuda.get_device_properties(dev) if cuda else None
    return Measured(
        device=str(dev),
        name=props.name if props else _cpu_name(),
        threads=None if cuda else torch.get_num_threads(),
        matmul_flops=matmul_flops(size, matmul),
        dtype="bfloat16",
        size=size,
        memory_bytes_s=block.numel() * 2 / read,
        memory_bytes=props.total_memory
        if props
        else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
    )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def catalog_entry(m: Measured, price_per_hour_usd: float = 0.0) -> dict[str, object]:
    """A `gpus:` entry of the catalog (simulator/deploy/catalog.py `Gpu`) for the measurement:
    the matmul rate stands for every format (a CPU has no faster 8-bit units a BLAS would use;
    on a GPU, measure fp8 yourself or keep the datasheet's ratio), no interconnect (one
    device), and weights loaded at the measured read rate."""
    tflops = round(m.matmul_flops / 1e12, 6)
    gbs = round(m.memory_bytes_s / 1e9, 3)
    threads = f", {m.threads} thread{'s' * (m.threads != 1)}" if m.threads else ""
    return {
        "vendor": "cpu" if m.device == "cpu" else m.device.split(":")[0],
        "memory_gib": round(m.memory_bytes / 2**30, 2),
        "memory_bandwidth_gbs": gbs,
        "tflops": {"bf16": tflops, "fp8": tflops, "int8": tflops},
        "interconnect_gbs": 0,
        "load_bandwidth_gbs": gbs,
        "price_per_hour_usd": price_per_hour_usd,
        "source": f"surgecast hardware on {m.name} ({m.device}{threads}): {m.dtype} matmul of "
        f"{m.size}, read bandwidth, measured {time.strftime('%Y-%m-%d')}",
    }


def main(argv: list[str] | None = None) -> int:
    """The child `surgecast hardware` runs: measure, print JSON."""
    p = argparse.ArgumentParser(prog="python -m surgecast.hardware")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--read-mib", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    if a.device == "cpu":
        m = measure_cpu(a.size, a.read_mib, a.repeats)
    else:
        m = measure_torch(a.device, a.size, a.read_mib, a.repeats)
    print(json.dumps(asdict(m)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
