"""Fuzzed run folders through `calibrate`, `report`, `gate` and `compare`: tracebacks, hangs,
seconds and peak memory.

    python benchmarks/fuzz_run_folders.py [--folders 10000] [--seed 0] [--workers 2]
                                          [--limit-s 60] [--failures FILE]

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
memory). A traceback is any exception out of main; clean exits are 0, 2, 3 and 99. Prints one
row per command: folders, exit codes, tracebacks, hangs, the slowest case and the largest
peak RSS (a child's, which includes the image it was forked from: the `baseline` row is that
image's own), then each distinct traceback's last line with a case that raised it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/fuzz_folders.py and tests/fuzz_runner.py

from surgecast.tables import markdown  # noqa: E402
from tests.fuzz_folders import BASE, Case, cases, make_folder, space  # noqa: E402
from tests.fuzz_runner import COMMANDS, Outcome, argv, run, warm  # noqa: E402

Row = tuple[int, str, Outcome]
BACKTESTED = (
    "simulated.jsonl",
    "backtest.json",
)  # written by calibrate's back-test  # case index, case, outcome


def run_cases(chosen: list[tuple[int, Case]], a: argparse.Namespace, tmp: Path) -> list[Row]:
    """Every command on each of `chosen`'s folders, from this process (a worker)."""
    warm(BASE, tmp)
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


def _work(job: tuple[list[tuple[int, Case]], argparse.Namespace]) -> tuple[list[Row], int]:
    """A worker's rows, and its own peak RSS (the image its children start from)."""
    chosen, a = job
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        rows = run_cases(chosen, a, Path(tmp))
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
    p.add_argument("--failures", help="also write every failing case's traceback here")
    a = p.parse_args()
    chosen = list(enumerate(cases(a.folders, a.seed)))
    jobs = [(chosen[w :: a.workers], a) for w in range(a.workers)]
    started = time.monotonic()
    with multiprocessing.get_context("fork").Pool(a.workers, maxtasksperchild=1) as pool:
        parts = pool.map(_work, jobs)
    rows = [row for part, _ in parts for row in part]
    baseline = max(kb for _, kb in parts)
    print(f"{len(chosen)} folders of {space()} distinct cases, seed {a.seed}, {a.workers} workers")
    print(table(rows, len(chosen), baseline))
    print(f"\n{time.monotonic() - started:.0f} s in all")
    for line in failures(rows):
        print(line)
    if a.failures:
        with open(a.failures, "w", encoding="utf-8") as f:
            for _, case, o in rows:
                if not o.clean:
                    f.write(f"== {case} {o.command}\n{o.traceback}\n")


if __name__ == "__main__":
    main()
