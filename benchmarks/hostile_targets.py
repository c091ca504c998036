"""`surgecast run` against each misbehaving target of tests/hostile_cases.py (issue 26).

For each case, a short run (RATE requests a second for DURATION s, target timeout TIMEOUT s)
against the loopback hostile target answering every request with that case, in a child process
whose peak resident memory the kernel reports (wait4). A table: the records written against the
requests planned, their status/error kinds, whether each is the kind the case calls for,
tracebacks in the run's output, hangs (a run past its bound, or a request that outlived its
timeout), wall time and peak memory of the generator.

    python benchmarks/hostile_targets.py [--family huge] [--case gzip_bomb] [--rate 4]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ holds the hostile target

from scenarios.records import read_records  # noqa: E402
from tests.hostile_cases import CASES, FAMILIES  # noqa: E402
from tests.hostile_target import HostileTarget  # noqa: E402

# a traceback's first line ends there (a target's words, shown in one line, never do)
TRACEBACK = re.compile(r"Traceback \(most recent call last\):\n")
SLACK_S = 1.0  # a request may end this long after its timeout (a loaded machine) and not hang


@dataclass(frozen=True)
class Row:
    case: str
    exit: int | None
    records: int
    planned: int
    kinds: str
    expected: bool
    tracebacks: int
    hangs: int
    wall_s: float
    peak_mb: float


def _scenario(path: Path, case: str, rate: float, duration: float, timeout: float) -> Path:
    data = {
        "name": f"hostile-{case}",
        "target": {"api": "chat", "timeout_s": timeout, "model": case},
        "traffic": {
            "rate": rate,
            "duration_s": duration,
            "seed": 26,
            "max_lateness_ms": 5000,
            "max_loop_lag_ms": 1000,
        },
        "workload": {
            "prompt_tokens": {"dist": "uniform", "low": 20, "high": 200},
            "output_tokens": {"dist": "uniform", "low": 5, "high": 20},
        },
        "slos": {"ttft": "p(95) < 60000", "e2e": ["p(95) < 60000"]},
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_case(url: str, case: str, work: Path, args: argparse.Namespace) -> Row:
    """One `surgecast run` against `case`, measured."""
    out = work / case
    scenario = _scenario(work / f"{case}.yaml", case, args.rate, args.duration, args.timeout)
    cmd = [sys.executable, "-m", "surgecast", "run", str(scenario), "--target", url]
    began = time.monotonic()
    with open(work / f"{case}.log", "w+b") as log:
        proc = subprocess.Popen([*cmd, "--out", str(out), "-q"], cwd=ROOT, stdout=log, stderr=log)
        code, peak_kb, hung = _wait(proc.pid, began + args.bound)
        wall = time.monotonic() - began
        log.seek(0)
        said = log.read().decode("utf-8", "replace")
    records = read_records(out / "requests.jsonl") if (out / "requests.jsonl").exists() else []
    run = out / "run.json"
    planned = json.loads(run.read_text())["planned_requests"] if run.exists() else -1
    expect = CASES[case].expect
    outcomes = [(r.status, r.error_kind, r.http_status) for r in records]
    late = [r for r in records if r.end is not None and r.end - r.start > args.timeout + SLACK_S]
    kinds = Counter(r.error_kind or r.status for r in records)
    return Row(
        case=case,
        exit=code,
        records=len(records),
        planned=planned,
        kinds=" ".join(f"{k}x{n}" for k, n in sorted(kinds.items())),
        expected=bool(records)
        and all(o == (expect.status, expect.kind, expect.http) for o in outcomes),
        tracebacks=len(TRACEBACK.findall(said)),
        hangs=len(late) + hung,
        wall_s=wall,
        peak_mb=peak_kb / 1024,
    )


def _wait(pid: int, until: float) -> tuple[int | None, int, int]:
    """The child's exit code, peak RSS (KiB, from wait4) and 1 if it ran past `until` (killed)."""
    while time.monotonic() < until:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage.ru_maxrss, 0
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    _, status, usage = os.wait4(pid, 0)
    return None, usage.ru_maxrss, 1


def table(rows: list[Row]) -> str:
    head = "| case | exit | records/planned | kinds | as expected | tracebacks | hangs | wall s "
    head += "| peak MB |"
    rule = "|---|---:|---:|---|---|---:|---:|---:|---:|"
    lines = [
        f"| {r.case} | {r.exit} | {r.records}/{r.planned} | {r.kinds} | "
        f"{'yes' if r.expected else 'NO'} | {r.tracebacks} | {r.hangs} | {r.wall_s:.1f} | "
        f"{r.peak_mb:.0f} |"
        for r in rows
    ]
    return "\n".join([head, rule, *lines])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--family", action="append", choices=sorted(FAMILIES), help="only these")
    p.add_argument("--case", action="append", choices=sorted(CASES), help="only these")
    p.add_argument("--rate", type=float, default=4.0, help="requests a second (default 4)")
    p.add_argument("--duration", type=float, default=1.0, help="seconds of arrivals (default 1)")
    p.add_argument("--timeout", type=float, default=2.0, help="target timeout_s (default 2)")
    p.add_argument("--bound", type=float, default=120.0, help="a run past this hung (s)")
    p.add_argument("--seed", type=int, default=26, help="the hostile target's seed")
    return p


def main() -> int:
    args = parser().parse_args()
    names = [*(args.case or [])]
    for family in args.family or []:
        names += FAMILIES[family]
    names = names or [n for f in sorted(FAMILIES) for n in FAMILIES[f]]
    rows = []
    with HostileTarget(seed=args.seed) as target, tempfile.TemporaryDirectory() as tmp:
        for name in dict.fromkeys(names):
            rows.append(run_case(target.url, name, Path(tmp), args))
            print(f"{name}: {rows[-1].wall_s:.1f} s", file=sys.stderr, flush=True)
    print(table(rows))
    tracebacks = sum(r.tracebacks for r in rows)
    hangs = sum(r.hangs for r in rows)
    unexpected = sum(not r.expected for r in rows)
    print(
        f"\n{len(rows)} cases: {tracebacks} tracebacks, {hangs} hangs, {unexpected} not as expected"
    )
    return 1 if tracebacks or hangs or unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
