"""A seeded sample of fuzzed run folders (tests/fuzz_folders.py: every field of the records
and of each contract document set to each hostile value, lines and files broken) through
calibrate, report, gate and compare: no traceback, no hang, and a refusal names the file (and
for a record field, its line and the field). benchmarks/fuzz_run_folders.py runs thousands."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz_folders import BASE, Case, cases, make_folder
from tests.fuzz_runner import argv, run, warm

FOLDERS = 120  # about a minute on a 2-core machine
SEED = 26
LIMIT_S = 60.0  # a hang: every command here takes under 2 s
# Open (issue 26): one record of a million chunk times is legal (under 16 MiB) but calibrate's
# step-cost fit then takes minutes (one row per step); not yet bounded.
SLOW_FIT = {("requests.jsonl", "huge-line")}


def _named(case: Case, folder: Path, stderr: str) -> list[str]:
    """What a refusal of `case`'s folder must say, missing from `stderr`."""
    want = [str(folder) if case.file == "." else case.file]
    if case.level == "field-every" and case.file == "requests.jsonl":
        want += ["line ", case.where.split(".")[0]]
    return [w for w in want if w not in stderr]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The intact folder, each command run on it once in this process (children fork from it)."""
    out = tmp_path_factory.mktemp("warm")
    warm(BASE, out)
    return out / "warm"


def test_fuzzed_run_folders(image: Path, tmp_path: Path) -> None:
    problems = []
    for i, case in enumerate(cases(FOLDERS, SEED)):
        where = tmp_path / f"case{i}"
        folder = make_folder(case, where / "run", SEED)
        for command in ("compare", "gate", "report", "calibrate"):
            if command == "calibrate" and (case.file, case.kind) in SLOW_FIT:
                continue
            args = argv(command, folder, image, where, swap=i % 2 == 1, backtest=i % 4 == 0)
            o = run(args, LIMIT_S, draw=False)
            if o.hung or not o.clean:
                problems.append(f"{case} {command}: {'hang' if o.hung else o.traceback}")
            elif o.code == 2 and (missing := _named(case, folder, o.stderr)):
                problems.append(f"{case} {command}: refusal without {missing}: {o.stderr}")
    assert not problems, "\n".join(problems)
