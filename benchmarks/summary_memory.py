"""Memory of a run's end-of-run summary, as the run grows: a day's records must not need a
day's worth of memory.

    python benchmarks/summary_memory.py [--requests 25000,100000,864000] [--chunks 100]

For each size, writes a requests.jsonl of that many streamed requests (`--chunks` chunks
each; 864,000 requests is a day at 10 requests/s), then summarises it in a fresh
process two ways and prints each one's peak resident memory (ru_maxrss):
- `list`: the records read into a list first, then their columns (the plain way, and
  surgecast's until now);
- `stream`: `RunFolder.table()`, columns built as the file streams past, ITL gaps kept up to
  MAX_GAPS and sampled beyond.
The `baseline` row is the same process importing the same modules and reading nothing.
Aim: the stream's peak grows by about 100 bytes a request, not with the tokens.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from surgecast.tables import markdown

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import resource, sys, time
from pathlib import Path
from scenarios.metrics import summarize_table
from scenarios.records import read_records
from scenarios.table import RequestTable
from surgecast.rundir import RunFolder
how, path = sys.argv[1], sys.argv[2]
t = time.perf_counter()
if how == "list":
    table = RequestTable.of(read_records(path + "/requests.jsonl"))
elif how == "stream":
    table = RunFolder(Path(path)).table()
if how != "baseline":
    s = summarize_table(table)
    print(s.requests, s.metrics["itl"].count, file=sys.stderr)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, time.perf_counter() - t)
"""


def write_run(folder: Path, requests: int, chunks: int) -> int:
    """A run folder's requests.jsonl of `requests` streamed successes; its size in bytes."""
    folder.mkdir()
    rng = np.random.default_rng(1)
    with (folder / "requests.jsonl").open("w", encoding="utf-8") as f:
        for i in range(requests):
            start = i * 0.1
            times = np.round(start + 0.05 + np.cumsum(rng.uniform(0.005, 0.02, chunks)), 6)
            record = {
                "id": str(i),
                "intended_start": start,
                "start": start,
                "first_token": times[0],
                "end": times[-1],
                "chunk_times": times.tolist(),
                "prompt_tokens": 200,
                "output_tokens": chunks,
                "planned_prompt_tokens": 200,
            }
            f.write(json.dumps(record) + "\n")
    return (folder / "requests.jsonl").stat().st_size


def measure(how: str, folder: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of one way, in its own process."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, how, str(folder)], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode:
        raise SystemExit(f"measuring {how} on {folder} failed:\n{done.stderr}")
    peak, seconds = done.stdout.split()
    return float(peak), float(seconds)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", default="25000,100000,864000", help="run sizes, comma-separated")
    p.add_argument("--chunks", type=int, default=100, help="content chunks per request")
    a = p.parse_args()
    sizes = [int(x) for x in a.requests.split(",")]
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        base, _ = measure("baseline", Path(tmp))
        for n in sizes:
            folder = Path(tmp) / f"run-{n}"
            started = time.perf_counter()
            size = write_run(folder, n, a.chunks)
            print(
                f"{n:,} requests written ({size / 2**20:.0f} MiB) in "
                f"{time.perf_counter() - started:.0f} s; summarising",
                file=sys.stderr,
                flush=True,
            )
            listed, list_s = measure("list", folder)
            streamed, stream_s = measure("stream", folder)
            rows.append(
                [
                    f"{n:,}",
                    f"{n * (a.chunks - 1):,}",
                    f"{size / 2**20:.0f}",
                    f"{listed - base:.0f}",
                    f"{list_s:.1f}",
                    f"{streamed - base:.0f}",
                    f"{stream_s:.1f}",
                    f"{(streamed - base) * 2**20 / n:.0f}",
                ]
            )
            (folder / "requests.jsonl").unlink()
    print(f"baseline (imports only): {base:.0f} MiB peak RSS")
    print(
        markdown(
            [
                "requests",
                "ITL gaps",
                "file MiB",
                "list: peak MiB over baseline",
                "list s",
                "stream: peak MiB over baseline",
                "stream s",
                "stream bytes/request",
            ],
            rows,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
