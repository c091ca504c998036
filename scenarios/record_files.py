"""A run's records over several files: `requests.jsonl` (the run's own process writes it) and
`requests-w<N>.jsonl` beside it, one per local generator process of a scaled-out run, each
appended and flushed by that process as each request ends (so a kill of any process loses no
record it wrote).

Each process that sends (a local worker, or a one-process run) also marks every attempt in
`sent-w<N>.jsonl` (`sent.jsonl`) before sending it (one flushed line, `SentMark`) and deletes
that file once every attempt it sent has its record. A process killed outright leaves it:
`recover_lost` then appends to that process's records a `worker_lost` record for each mark
without a record (the requests the target may have served), once however often it runs, and
deletes the marks. Readers never read marks: they are not records.

A finished run merges the worker files into `requests.jsonl` (`merge`); a killed one is merged
by the next `surgecast report`. Until then a reader takes the union (`iter_all`). The merge
is exactly-once whenever it is cut: it recovers each process's lost requests, replaces
`requests.jsonl` at once with itself followed by the worker files in order, then deletes them;
a reader that finds worker files whose contents `requests.jsonl` already ends with knows they
were merged and skips them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from scenarios.records import WORKER_LOST, RequestRecord, SentMark, iter_marks, iter_records
from scenarios.runfiles import UnreadableFile, open_regular

_WORKER = re.compile(r"requests-w(\d+)\.jsonl")
RUN_FILE = "requests.jsonl"  # a one-process run's records (and a distributed master's)
_CHUNK = 1 << 20


def worker_file(requests: Path, number: int) -> Path:
    """Where local worker `number` writes its records, beside `requests`."""
    return requests.with_name(f"requests-w{number}.jsonl")


def sent_file(records: Path) -> Path:
    """Where the process writing `records` marks each attempt before sending it (a worker's
    requests-w1.jsonl: sent-w1.jsonl; a one-process run's requests.jsonl: sent.jsonl)."""
    return records.with_name("sent" + records.name.removeprefix("requests"))


class SentMarks:
    """A local worker's marks (`sent_file`), one flushed line per attempt before it leaves."""

    def __init__(self, path: Path):
        self.path = path
        self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by `close`)

    def write(self, mark: SentMark) -> None:
        self._stream.write(mark.to_json() + "\n")
        self._stream.flush()

    def close(self, settled: bool) -> None:
        """Close the file, and delete it when every attempt sent has its record (`settled`)."""
        self._stream.close()
        if settled:
            self.path.unlink(missing_ok=True)


def worker_files(requests: Path) -> list[Path]:
    """The worker files beside `requests`, in their numbers' order."""
    found = []
    with contextlib.suppress(OSError):
        for path in requests.parent.iterdir():
            match = _WORKER.fullmatch(path.name)
            if match and path.is_file() and not path.is_symlink():
                found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def unmerged(requests: Path) -> list[Path]:
    """The worker files whose records `requests` does not hold yet (none, once merged)."""
    files = worker_files(requests)
    if files and _ends_with(requests, files):
        return []  # a merge was cut between replacing `requests` and deleting these
    return files


def iter_all(requests: Path, warn: Callable[[str], None] | None = None) -> Iterator[RequestRecord]:
    """Every record of the run, each once: `requests` and the worker files not merged in it."""
    files = [requests, *unmerged(requests)]
    return itertools.chain.from_iterable(iter_records(f, warn) for f in files)


@dataclass(frozen=True)
class Merged:
    files: int  # worker files moved into requests.jsonl
    lost: dict[str, int]  # worker file with marks left (its worker died) -> requests lost

    def lost_words(self) -> str | None:
        """How many requests each dead worker's marks recorded as lost, if any worker left
        marks."""
        if not self.lost:
            return None
        each = ", ".join(
            f"{n} by "
            + ("the run's own process" if name == RUN_FILE else f"the worker writing {name}")
            for name, n in self.lost.items()
        )
        return (
            f"the run was killed with requests in flight, recorded as lost (error_kind "
            f"{WORKER_LOST}; the target may have served them): {each}"
        )


def merge(requests: Path) -> Merged:
    """Move the worker files' records into `requests` (each file's whole lines: a line torn by
    a kill is dropped, as a reader drops it), each with its lost requests recovered first."""
    files = unmerged(requests)
    own = requests.is_file() and not requests.is_symlink()  # never truncated through a link
    writers = [requests, *files] if own else files  # each process marked its attempts
    lost = {path.name: n for path in writers if (n := recover_lost(path)) is not None}
    if files:
        fd, tmp = tempfile.mkstemp(dir=requests.parent, prefix=f".{requests.name}.")
        try:
            with os.fdopen(fd, "wb") as out:
                for path in [requests, *files]:
                    _copy_whole_lines(path, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, requests)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    for path in worker_files(requests):  # merged now, or in a merge cut before this step
        path.unlink()
    return Merged(len(files), lost)


def recover_lost(records: Path) -> int | None:
    """A dead worker's attempts marked sent with no record in its file `records` (whole lines
    only: a torn last line is cut off first), each appended to it as a `worker_lost` record;
    then its marks are deleted. How many; None when it left no marks (it ended with every
    attempt recorded). Run again, it adds none: each lost record ends its mark."""
    marks = sent_file(records)
    if not marks.exists():
        return None
    os.truncate(records, _whole_size(records))
    ended = {(r.id, r.attempt) for r in iter_records(records, _quiet)}
    lost = []
    for mark in iter_marks(marks, _quiet):
        if mark.key not in ended:
            ended.add(mark.key)  # a mark written twice is still one request
            lost.append(mark.lost(records.name).to_json() + "\n")
    if lost:
        with open(records, "a", encoding="utf-8") as f:
            f.writelines(lost)
            f.flush()
            os.fsync(f.fileno())
    marks.unlink()
    return len(lost)


def _quiet(_: str) -> None:
    """Bad lines are said by the reader of the merged records, not twice."""


def _whole_size(path: Path) -> int:
    """The size of `path` up to and including its last newline (0 if it has none)."""
    with open_regular(path) as f:
        end = f.seek(0, os.SEEK_END)
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            block = f.read(end - start)
            newline = block.rfind(b"\n")
            if newline >= 0:
                return start + newline + 1
            end = start
    return 0


def _copy_whole_lines(path: Path, out: BinaryIO) -> None:
    left = _whole_size(path)
    with open_regular(path) as f:
        while left and (data := f.read(min(left, _CHUNK))):
            out.write(data)
            left -= len(data)


def _ends_with(requests: Path, files: list[Path]) -> bool:
    """Whether `requests` ends with the whole lines of `files`, one after another (not when
    any cannot be read: the reader then says why)."""
    try:
        return _tail_is(requests, files)
    except (OSError, UnreadableFile):
        return False


def _tail_is(requests: Path, files: list[Path]) -> bool:
    sizes = [_whole_size(p) for p in files]
    total = sum(sizes)
    if total == 0:
        return False
    with open_regular(requests) as r:
        end = r.seek(0, os.SEEK_END)
        if end < total:
            return False
        r.seek(end - total)
        for path, size in zip(files, sizes, strict=True):
            with open_regular(path) as f:
                while size:
                    n = min(size, _CHUNK)
                    if r.read(n) != f.read(n):
                        return False
                    size -= n
    return True
