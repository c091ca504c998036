"""A run's records over several files: `requests.jsonl` (the run's own process writes it) and
`requests-w<N>.jsonl` beside it, one per local generator process of a scaled-out run, each
appended and flushed by that process as each request ends (so a kill of any process loses no
record it wrote).

Each process that sends (a local worker, or a one-process run) also marks every attempt in
`sent-w<N>.jsonl` (`sent.jsonl`) before sending it (one flushed line, `SentMark`) and deletes
that file once every attempt it sent has its record. A remote worker sends each mark to its
master ahead of the attempt, which writes it to `sent-remote.jsonl`, beside the records those
workers send back to `requests.jsonl`. A process killed outright leaves its marks:
`recover_lost` then appends to that process's records a `worker_lost` record for each mark
without a record (the requests the target may have served), once however often it runs, and
deletes the marks. Readers never read marks: they are not records.

A finished run merges the worker files into `requests.jsonl` (`merge`); a killed one is merged
by the next `surgecast report`, which first waits for any worker still stopping: each holds a
lock on its file while it lives (`hold`), which the kernel drops at its death. Until then a
reader takes the union (`iter_all`). The merge is exactly-once whenever it is cut: it
recovers each process's lost requests, replaces `requests.jsonl` at once with itself followed
by the worker files in order, then deletes them; a reader that finds worker files whose
contents `requests.jsonl` already ends with knows they were merged and skips them.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from scenarios.records import WORKER_LOST, RequestRecord, SentMark, iter_marks, iter_records
from scenarios.runfiles import UnreadableFile, open_regular

_WORKER = re.compile(r"requests-w(\d+)\.jsonl")
RUN_FILE = "requests.jsonl"  # a one-process run's records (and a distributed master's)
REMOTE_MARKS = "sent-remote.jsonl"  # the remote workers' marks, kept by their master
_CHUNK = 1 << 20


def worker_file(requests: Path, number: int) -> Path:
    """Where local worker `number` writes its records, beside `requests`."""
    return requests.with_name(f"requests-w{number}.jsonl")


def sent_file(records: Path) -> Path:
    """Where the process writing `records` marks each attempt before sending it (a worker's
    requests-w1.jsonl: sent-w1.jsonl; a one-process run's requests.jsonl: sent.jsonl)."""
    return records.with_name("sent" + records.name.removeprefix("requests"))


class StillWritten(OSError):
    """A worker file's process is alive (stopping): merged now, its last records would be
    lost."""


def hold(stream: IO[Any]) -> None:
    """Say that this process writes `stream`'s file as long as it lives (an advisory lock the
    kernel drops at its death, however it dies): a merge waits for it."""
    fcntl.flock(stream.fileno(), fcntl.LOCK_EX)


def _written(path: Path) -> bool:
    """Whether a live process holds `path` (`hold`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _wait_for_writers(files: list[Path], wait_s: float, say: Callable[[str], None]) -> None:
    """Return once no process holds any of `files`; StillWritten after `wait_s`."""
    deadline = time.monotonic() + wait_s
    busy = [p for p in files if _written(p)]
    if busy and wait_s > 0:
        say(f"waiting up to {wait_s:g} s for the processes writing {_names(busy)} to stop")
    while busy:
        if time.monotonic() >= deadline:
            raise StillWritten(
                f"{_names(busy)} still written by a live generator process: run `surgecast "
                "report` again once it has stopped"
            )
        time.sleep(0.05)
        busy = [p for p in busy if _written(p)]


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)


def remote_marks_file(requests: Path) -> Path:
    """Where a master keeps the marks its remote workers send, beside `requests`."""
    return requests.with_name(REMOTE_MARKS)


class SentMarks:
    """A process's marks (`sent_file`, or a master's `remote_marks_file`), one flushed line per
    attempt before it leaves."""

    def __init__(self, path: Path):
        self.path = path
        self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by `close`)

    def write(self, mark: SentMark) -> None:
        self.write_line(mark.to_json())

    def write_line(self, line: str) -> None:
        """A mark already in its JSON line (a remote worker's, as it came)."""
        self._stream.write(line + "\n")
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
        each = ", ".join(f"{n} by {_whose(name)}" for name, n in self.lost.items())
        return (
            f"the run was killed with requests in flight, recorded as lost (error_kind "
            f"{WORKER_LOST}; the target may have served them): {each}"
        )


def _quiet(_: str) -> None:
    """Bad lines are said by the reader of the merged records, not twice."""


def _whose(name: str) -> str:
    """Whose marks a `Merged.lost` key names, in words."""
    if name == RUN_FILE:
        return "the run's own process"
    if name == REMOTE_MARKS:
        return "the remote workers (their marks reached the master)"
    return f"the worker writing {name}"


def merge(requests: Path, wait_s: float = 0.0, say: Callable[[str], None] = _quiet) -> Merged:
    """Move the worker files' records into `requests` (each file's whole lines: a line torn by
    a kill is dropped, as a reader drops it), each with its lost requests recovered first.
    A worker still writing its file (stopping after its master's death) is waited for up to
    `wait_s` (said through `say`), then StillWritten."""
    files = unmerged(requests)
    _wait_for_writers(files, wait_s, say)
    own = requests.is_file() and not requests.is_symlink()  # never truncated through a link
    writers = [requests, *files] if own else files  # each process marked its attempts
    lost = {path.name: n for path in writers if (n := recover_lost(path)) is not None}
    if own and (n := recover_lost(requests, remote_marks_file(requests))) is not None:
        lost[REMOTE_MARKS] = n  # the remote workers' records came to `requests`
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


def recover_lost(records: Path, marks: Path | None = None) -> int | None:
    """A dead worker's attempts marked sent (in `marks`, by default `sent_file(records)`) with
    no record in its file `records` (whole lines only: a torn last line is cut off first), each
    appended to it as a `worker_lost` record; then its marks are deleted. How many; None when
    it left no marks (it ended with every attempt recorded). Run again, it adds none: each lost
    record ends its mark."""
    its_own = marks is None  # the marks of the process writing `records`
    marks = marks or sent_file(records)
    if not marks.exists():
        return None
    os.truncate(records, _whole_size(records))
    ended = {(r.id, r.attempt) for r in iter_records(records, _quiet)}
    lost = []
    for mark in iter_marks(marks, _quiet):
        if mark.key not in ended:
            ended.add(mark.key)  # a mark written twice is still one request
            who = records.name if its_own else "a remote worker"
            lost.append(mark.lost(who).to_json() + "\n")
    if lost:
        with open(records, "a", encoding="utf-8") as f:
            f.writelines(lost)
            f.flush()
            os.fsync(f.fileno())
    marks.unlink()
    return len(lost)


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
