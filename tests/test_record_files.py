"""A run's records over several files (issue 26): the local workers' own files are read with
requests.jsonl until merged into it, and every record is read once whenever the merge is cut."""

from __future__ import annotations

import os
from pathlib import Path

from scenarios.record_files import iter_all, merge, unmerged, worker_file
from scenarios.records import RequestRecord


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
    assert merge(requests) == 2
    assert not unmerged(requests) and not list(tmp_path.glob("requests-w*"))
    assert _ids(requests) == ALL and requests.read_text().endswith("\n")
    assert merge(requests) == 0 and _ids(requests) == ALL  # again: nothing to do


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
