"""Fuzzed run folders through `calibrate`, `report`, `gate` and `compare`: tracebacks, hangs,
seconds and peak memory.

    python benchmarks/fuzz_run_folders.py [--folders 10000] [--seed 0] [--workers 2]
                                          [--limit-s 60] [--every 500] [--failures FILE]

Each folder is the real run folder tests/data/run-8a52588 with one thing made hostile
(tests/fuzz_folders.py): a field of a record, of a telemetry sample or of a contract document
set to a hostile value (null, wrong types, lists, objects, integers beyond 64 bits, NaN and
Infinity, negatives, empty and long strings, deep nesting, a duplicated key, the field
missing), on one line or every line; a line cut short, garbage, a huge line; a file missing,
a folder, a link (dangling, a loop, /dev/zero), a FIFO, empty, cut short, garbage. The cases
go round the files in turn, each file's fields shuffled (seeded), so a record's fields are all
covered before run.json's long tail.

Each command runs in a child forked from a process that ran it once already (the CLI's main
with its argv, in that image: no interpreter start), killed after --limit-s seconds (a hang),
its address space capped at 4 GiB (a runaway allocation is a traceback, not the machine's
memory). A traceback is any exception out of main; clean exits are 0, 2, 3 and 99. Each worker
is warmed once and takes the folders BATCH at a time. Prints, after every --every folders and
at the end, one row per command: folders, exit codes, tracebacks, hangs, the slowest case and
the largest peak RSS (a child's, which includes the image it was forked from: the `baseline`
row is that image's own); then each distinct traceback's last line with a case that raised it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/fuzz_folders.py and tests/fuzz_runner.py

from surgecast.tables import markdown  # noqa: E402
from tests.fuzz_folders import BASE, Case, cases, make_folder, space  # noqa: E402
from tests.fuzz_runner import COMMANDS, Outcome, argv, run, warm  # noqa: E402

Row = tuple[int, str, Outcome]
BATCH = 20  # folders a worker takes at a time
BACKTESTED = (
    "simulated.jsonl",
    "backtest.json",
)  # written by calibrate's back-test  # case index, case, outcome


def run_cases(chosen: list[tuple[int, Case]], a: argparse.Namespace, tmp: Path) -> list[Row]:
    """Every command on each of `chosen`'s folders, from this process (a worker, warmed)."""
    rows = []
    for i, case in chosen:
        where = tmp / f"case{i}"
        where.mkdir()
        folder = make_folder(case, where / "run", a.seed)
        draw = a.draw_every > 0 and i % a.draw_every == 0
        backtest = i % a.backtest_every == 0 or case.file in BACKTESTED
        for command in ("compare", "gate", "report", "calibrate"):  # calibrate writes last
            args = argv(command, folder, tmp / "warm", where, i % 2 == 1, backtest)
            rows.append((i, str(case), run(args, a.limit_s, draw)))
        _remove(where)
    return rows


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    if path.exists() or path.is_symlink():
        path.unlink()


_WORKER: dict[str, Any] = {}  # a worker's folder and arguments, set once it is warmed


def _warm_worker(root: str, a: argparse.Namespace) -> None:
    """A worker's start: its own folder under `root`, every command run once (imports done)."""
    tmp = Path(root) / f"worker-{os.getpid()}"
    tmp.mkdir()
    warm(BASE, tmp)
    _WORKER.update(tmp=tmp, args=a)


def _work(chosen: list[tuple[int, Case]]) -> tuple[list[Row], int]:
    """A batch's rows, and the worker's own peak RSS (the image its children start from)."""
    rows = run_cases(chosen, _WORKER["args"], _WORKER["tmp"])
    return rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def table(rows: list[Row], folders: int, baseline_kb: int) -> str:
    out = [["baseline (the image)", "", "", "", "", "", f"{baseline_kb / 1024:.0f}"]]
    for command in COMMANDS:
        mine = [o for _, _, o in rows if o.command == command]
        codes = Counter("hang" if o.hung else str(o.code) for o in mine if o.clean or o.hung)
        worst = max(mine, key=lambda o: o.seconds)
        out.append(
            [
                command,
                str(len(mine)),
                ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())),
                str(sum(1 for o in mine if not o.clean and not o.hung)),
                str(sum(o.hung for o in mine)),
                f"{worst.seconds:.2f}",
                f"{max(o.peak_rss_kb for o in mine) / 1024:.0f}",
            ]
        )
    head = ["command", "folders", "exit codes", "tracebacks", "hangs", "max s", "peak RSS MiB"]
    return markdown(head, out)


def failures(rows: list[Row]) -> list[str]:
    """Each distinct failure (a traceback's last line, or a hang) once, with a case."""
    seen: dict[str, str] = {}
    for _, case, o in rows:
        if not o.clean:
            last = o.traceback.strip().splitlines()[-1] if o.traceback.strip() else "?"
            seen.setdefault(f"{o.command}: {last[:200]}", case)
    return [f"{what}  <- {case}" for what, case in sorted(seen.items())]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folders", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--limit-s", type=float, default=60.0, help="a command's time limit")
    p.add_argument(
        "--draw-every",
        type=int,
        default=20,
        help="draw and encode the figures of every Nth folder only (0: none; 1: all); the "
        "others are built, not drawn (drawing is about 70%% of a folder's time)",
    )
    p.add_argument(
        "--backtest-every",
        type=int,
        default=4,
        help="calibrate back-tests every Nth folder and each folder whose simulated.jsonl or "
        "backtest.json is hostile (the files it writes), the others with --no-backtest",
    )
    p.add_argument(
        "--failures", help="also write every failing case's traceback here, as they come"
    )
    p.add_argument(
        "--every",
        type=int,
        default=500,
        help="print the table so far after each this many folders (a long run stopped early "
        "still has its count and table)",
    )
    a = p.parse_args()
    chosen = list(enumerate(cases(a.folders, a.seed)))
    batches = [chosen[i : i + BATCH] for i in range(0, len(chosen), BATCH)]
    started = time.monotonic()
    if a.failures:
        open(a.failures, "w").close()  # appended to as the batches come
    rows: list[Row] = []
    baseline = 0
    printed = 0
    head = f"folders of {space()} distinct cases, seed {a.seed}, {a.workers} workers"
    with tempfile.TemporaryDirectory(prefix="fuzz-") as root:
        context = multiprocessing.get_context("fork")
        with context.Pool(a.workers, _warm_worker, (root, a)) as pool:
            for part, kb in pool.imap(_work, batches):  # in order: each count is a prefix
                rows += part
                _write_failures(a.failures, part)
                baseline = max(baseline, kb)
                done = len({i for i, _, _ in rows})
                if done - printed >= a.every or done == len(chosen):
                    printed = done
                    print(f"{done} {head}\n{table(rows, done, baseline)}", flush=True)
                    print(f"{time.monotonic() - started:.0f} s so far", flush=True)
                    print("\n".join([*failures(rows), ""]), flush=True)


def _write_failures(path: str | None, rows: list[Row]) -> None:
    """Append each failing case's traceback to `path` (if given), as the batches come."""
    if path:
        with open(path, "a", encoding="utf-8") as f:
            for _, case, o in rows:
                if not o.clean:
                    f.write(f"== {case} {o.command}\n{o.traceback}\n")


if __name__ == "__main__":
    main()
