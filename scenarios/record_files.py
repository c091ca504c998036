"""A run's records over several files: `requests.jsonl` (the run's own process writes it) and
`requests-w<N>.jsonl` beside it, one per local generator process of a scaled-out run, each
appended and flushed by that process as each request ends (so a kill of any process loses no
record it wrote).

A finished run merges the worker files into `requests.jsonl` (`merge`); a killed one is merged
by the next `surgecast report`. Until then a reader takes the union (`iter_all`). The merge
is exactly-once whenever it is cut: it replaces `requests.jsonl` at once with itself followed
by the worker files in order, then deletes them; a reader that finds worker files whose
contents `requests.jsonl` already ends with knows they were merged and skips them.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from scenarios.records import RequestRecord, iter_records
from scenarios.runfiles import UnreadableFile, open_regular

_WORKER = re.compile(r"requests-w(\d+)\.jsonl")
_CHUNK = 1 << 20


def worker_file(requests: Path, number: int) -> Path:
    """Where local worker `number` writes its records, beside `requests`."""
    return requests.with_name(f"requests-w{number}.jsonl")


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


def merge(requests: Path) -> int:
    """Move the worker files' records into `requests` (each file's whole lines: a line torn by
    a kill is dropped, as a reader drops it); how many files were merged."""
    files = unmerged(requests)
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
    return len(files)


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
