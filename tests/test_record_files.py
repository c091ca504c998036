"""A run's records over several files (issue 26): the local workers' own files are read with
requests.jsonl until merged into it, and every record is read once whenever the merge is cut.
A dead worker's sent marks without a record become one lost record each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scenarios.record_files import (
    REMOTE_MARKS,
    Merged,
    StillWritten,
    iter_all,
    merge,
    recover_lost,
    remote_marks_file,
    sent_file,
    unmerged,
    worker_file,
)
from scenarios.records import WORKER_LOST, RequestRecord, SentMark, parse_mark, parse_record
from tests.conftest import ROOT, run_cli

OLD = Path(__file__).parent / "data" / "run-8a52588"


def _record(n: int) -> str:
    return RequestRecord(id=f"r{n}", intended_start=n, start=n, end=n + 1.0).to_json() + "\n"


def _folder(tmp: Path) -> Path:
    """requests.jsonl with two records, two worker files with three and two (the second's
    last line torn by a kill)."""
    requests = tmp / "requests.jsonl"
    requests.write_text(_record(0) + _record(1))
    worker_file(requests, 0).write_text(_record(2) + _record(3) + _record(4))
    worker_file(requests, 1).write_text(_record(5) + _record(6) + _record(7)[:20])
    return requests


def _ids(requests: Path) -> list[str]:
    return sorted(r.id for r in iter_all(requests))


ALL = [f"r{n}" for n in range(7)]


def test_a_reader_sees_the_union_and_a_merge_moves_it_into_one_file(tmp_path: Path) -> None:
    requests = _folder(tmp_path)
    assert _ids(requests) == ALL
    assert merge(requests) == Merged(2, {})
    assert not unmerged(requests) and not list(tmp_path.glob("requests-w*"))
    assert _ids(requests) == ALL and requests.read_text().endswith("\n")
    assert merge(requests) == Merged(0, {}) and _ids(requests) == ALL  # again: nothing to do


def test_a_merge_cut_before_it_deleted_the_worker_files_counts_nothing_twice(
    tmp_path: Path,
) -> None:
    requests = _folder(tmp_path)
    kept = {p: p.read_bytes() for p in tmp_path.glob("requests-w*")}
    merge(requests)
    for path, data in kept.items():  # as if killed after the replace, before any unlink
        path.write_bytes(data)
    assert _ids(requests) == ALL
    os.unlink(worker_file(requests, 0))  # ... or after the first unlink
    assert _ids(requests) == ALL
    merge(requests)
    assert _ids(requests) == ALL and not list(tmp_path.glob("requests-w*"))


def test_a_worker_file_with_records_not_merged_is_read(tmp_path: Path) -> None:
    """A worker file whose records requests.jsonl does not end with is not yet merged."""
    requests = _folder(tmp_path)
    merge(requests)
    worker_file(requests, 3).write_text(_record(9))
    assert _ids(requests) == [*ALL, "r9"]


def _mark(n: int, attempt: int = 0) -> str:
    mark = SentMark(f"r{n}", attempt, n, n + 0.01, planned_output_tokens=30 + n)
    return mark.to_json() + "\n"


def _killed_worker(tmp: Path) -> Path:
    """Worker 0 marked r2-r4 and r8 (r4's retry too) and recorded r2-r4; r8 and the retry were
    in flight when it was killed, and so was r9, its mark cut mid-line."""
    requests = _folder(tmp)
    marks = _mark(2) + _mark(3) + _mark(4) + _mark(8) + _mark(4, attempt=1) + _mark(9)[:25]
    sent_file(worker_file(requests, 0)).write_text(marks)
    return requests


def test_a_dead_workers_marks_without_records_become_one_lost_record_each(
    tmp_path: Path,
) -> None:
    requests = _killed_worker(tmp_path)
    assert _ids(requests) == ALL  # marks are not records
    assert merge(requests) == Merged(2, {"requests-w0.jsonl": 2})
    assert not list(tmp_path.glob("sent-w*"))
    records = list(iter_all(requests))
    assert sorted(r.id for r in records) == sorted([*ALL, "r4", "r8"])  # each attempt once
    lost = [r for r in records if r.error_kind == WORKER_LOST]
    assert [(r.id, r.attempt) for r in lost] == [("r8", 0), ("r4", 1)]
    for r in lost:
        assert r.status == "error" and r.http_status is None and r.end is None
        assert r.token_source == "none" and not r.output_tokens and not r.prompt_tokens
        assert r.start == r.intended_start + 0.01  # when it was sent
        assert r.planned_output_tokens == 30 + int(r.id[1:])
        assert "requests-w0.jsonl" in (r.error_detail or "")
    assert "2 by the worker writing requests-w0.jsonl" in (
        Merged(2, {"requests-w0.jsonl": 2}).lost_words() or ""
    )
    assert merge(requests) == Merged(0, {}) and len(list(iter_all(requests))) == len(records)


def test_recovering_twice_records_each_lost_request_once(tmp_path: Path) -> None:
    """A merge cut after it appended the lost records, before it deleted the marks: run again,
    it adds none. A worker file torn by the kill loses only its torn line."""
    requests = _killed_worker(tmp_path)
    marks = sent_file(worker_file(requests, 1))
    marks.write_text(_mark(5) + _mark(6) + _mark(7))  # r7's record is the torn line
    kept = marks.read_bytes()
    assert recover_lost(worker_file(requests, 1)) == 1 and not marks.exists()
    marks.write_bytes(kept)
    assert recover_lost(worker_file(requests, 1)) == 0
    merge(requests)
    ids = sorted((r.id, r.attempt) for r in iter_all(requests))
    assert ids == sorted({(f"r{n}", 0) for n in range(9)} | {("r4", 1)})


def test_a_worker_that_ended_settled_leaves_no_marks_and_the_merge_adds_nothing(
    tmp_path: Path,
) -> None:
    requests = _folder(tmp_path)
    assert recover_lost(worker_file(requests, 0)) is None  # no marks file
    assert merge(requests) == Merged(2, {}) and _ids(requests) == ALL


def test_the_remote_workers_marks_kept_by_their_master_are_recovered_into_its_records(
    tmp_path: Path,
) -> None:
    """A master writes its remote workers' records to requests.jsonl and their marks to
    sent-remote.jsonl: a mark without a record there is one lost request, said as the remote
    workers'; local workers' marks are recovered beside, each into its own file."""
    requests = _killed_worker(tmp_path)
    remote_marks_file(requests).write_text(_mark(0) + _mark(1) + _mark(20))  # r0, r1 recorded
    merged = merge(requests)
    assert merged == Merged(2, {"requests-w0.jsonl": 2, REMOTE_MARKS: 1})
    assert not list(tmp_path.glob("sent*"))
    lost = [r for r in iter_all(requests) if r.error_kind == WORKER_LOST]
    assert sorted((r.id, r.attempt) for r in lost) == [("r20", 0), ("r4", 1), ("r8", 0)]
    assert "a remote worker" in next(r.error_detail or "" for r in lost if r.id == "r20")
    words = merged.lost_words() or ""
    assert "1 by the remote workers" in words and "2 by the worker writing" in words


def _holder(path: Path, append: str, after_s: float) -> subprocess.Popen[str]:
    """A process that holds `path` as a worker does (`hold`), appends `append` after
    `after_s`, and exits; started once it holds it."""
    code = (
        "import sys, time\n"
        "from scenarios.record_files import hold\n"
        f"f = open({str(path)!r}, 'a')\n"
        "hold(f)\n"
        "print('held', flush=True)\n"
        f"time.sleep({after_s})\n"
        f"f.write({append!r}); f.flush()\n"
    )
    cmd = [sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_merge_waits_for_a_worker_still_writing_its_file(tmp_path: Path) -> None:
    """A worker stopping after its master's death still writes its file: a merge then waits
    for it (the kernel drops its lock when it exits, however it exits), and merges every record
    it wrote, once; past its wait, a merge moves nothing and says so."""
    requests = _folder(tmp_path)
    worker = worker_file(requests, 0)
    proc = _holder(worker, _record(9), after_s=5.0)
    try:
        with pytest.raises(StillWritten, match=r"requests-w0\.jsonl still written"):
            merge(requests, wait_s=0.2)
        assert worker.exists() and _ids(requests) == ALL  # nothing moved
    finally:
        proc.kill()
        proc.wait()
    proc = _holder(worker, _record(9), after_s=0.5)
    said: list[str] = []
    assert merge(requests, wait_s=30, say=said.append) == Merged(2, {})
    assert proc.wait(timeout=5) == 0
    assert said and "waiting up to 30 s" in said[0]
    assert _ids(requests) == [*ALL, "r9"]  # the late record, once
    assert not worker.exists()


def test_the_record_checker_takes_a_lost_record() -> None:
    """Every field a mark carries reaches its lost record, a regenerate's flag included."""
    mark = SentMark("r1", 2, 1.0, 1.5, "p", 3, 1, 40, 50, regenerate=True)
    lost = mark.lost("requests-w3.jsonl")
    again = parse_record(lost.to_json().encode())
    assert again == lost and again.error_kind == WORKER_LOST
    assert (again.persona, again.session, again.turn, again.regenerate) == ("p", 3, 1, True)
    assert parse_mark(mark.to_json().encode()) == mark


def test_report_records_a_dead_workers_requests_in_flight_and_voids_the_run(
    tmp_path: Path,
) -> None:
    """A run folder left with a worker's file and its marks (its master killed with it):
    `surgecast report` records the marked request without a record as lost, counts it as a
    failed request, and says so in the run's reasons."""
    run = Path(shutil.copytree(OLD, tmp_path / "run"))
    before = json.loads((run / "summary.json").read_text())["requests"]
    worker = worker_file(run / "requests.jsonl", 0)
    worker.write_text(_record(1000))
    sent_file(worker).write_text(_mark(1000) + _mark(1001))
    result = run_cli("report", str(run))
    assert result.returncode == 0, result.stderr[-3000:]
    assert not list(run.glob("sent-w*")) and not list(run.glob("requests-w*"))
    meta = json.loads((run / "run.json").read_text())
    assert not meta["validity"]["valid"]
    assert "1 by the worker writing requests-w0.jsonl" in meta["validity"]["reasons"][-1]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["requests"] == before + 2 and summary["error_kinds"][WORKER_LOST] == 1
