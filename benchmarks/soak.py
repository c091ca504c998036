"""Memory over a long run: `surgecast run` at a steady rate against the reference target, its
resident memory and open files sampled as it goes.

    python benchmarks/soak.py [--minutes 30] [--rate 10] [--every-s 30]

Prints one row per sample (minutes, requests written, RSS MiB, open files), the growth of
RSS from the end of the warm-up (the first --warmup-minutes) to the end (aim: under 5%), and
the run's peak RSS over its whole life, its end-of-run summary included.
Loopback only; the run's folder is temporary.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from surgecast.tables import markdown

ROOT = Path(__file__).resolve().parents[1]


def scenario(minutes: float, rate: float) -> dict[str, object]:
    return {
        "name": "soak",
        "target": {"api": "chat", "timeout_s": 30},
        "reference_target": {
            "max_num_seqs": 64,
            "kv_cache_tokens": 262144,
            "cold_start_s": 0.2,
            "step": {"base_ms": 10, "per_decode_seq_ms": 0.2, "per_prefill_token_ms": 0.01},
        },
        "traffic": {"rate": rate, "duration_s": minutes * 60, "seed": 1},
        "workload": {
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 400},
            "output_tokens": {"dist": "uniform", "low": 20, "high": 200},
        },
    }


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as f:
        return sum(1 for _ in f)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="run length (default 30)")
    p.add_argument("--rate", type=float, default=10.0, help="requests/s (default 10)")
    p.add_argument("--every-s", type=float, default=30.0, help="seconds between samples")
    p.add_argument("--warmup-minutes", type=float, default=2.0, help="growth is counted after this")
    a = p.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the servers it started are stopped
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "soak.yaml"
        spec.write_text(yaml.safe_dump(scenario(a.minutes, a.rate)), encoding="utf-8")
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "surgecast", "run", str(spec), "--out", str(out)]
        proc = subprocess.Popen([*cmd, "--quiet", "--no-report"], cwd=ROOT)
        started = time.monotonic()
        samples: list[tuple[float, float]] = []
        while proc.poll() is None:
            time.sleep(a.every_s)
            if proc.poll() is not None:
                break
            minutes = (time.monotonic() - started) / 60.0
            rss = rss_mib(proc.pid)
            samples.append((minutes, rss))
            row = [f"{minutes:.1f}", lines(out / "requests.jsonl"), f"{rss:.1f}"]
            rows.append([*row, open_files(proc.pid)])
            print(" | ".join(map(str, rows[-1])), file=sys.stderr, flush=True)
        code = proc.wait()
    print(markdown(["minutes", "records", "RSS MiB", "open files"], rows))
    after = [rss for m, rss in samples if m >= a.warmup_minutes]
    if len(after) >= 2:
        growth = (after[-1] - after[0]) / after[0] * 100.0
        print(
            f"RSS growth after {a.warmup_minutes:g} min of warm-up: {growth:+.1f}% "
            f"({after[0]:.1f} -> {after[-1]:.1f} MiB; aim: under 5%)"
        )
    # the run's own peak, its end-of-run summary included (the samples stop when it exits)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    print(f"peak RSS of the whole run, end-of-run summary included: {peak:.1f} MiB")
    print(f"surgecast run exited {code}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
