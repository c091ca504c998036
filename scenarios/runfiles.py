"""Reading a run folder's files within bounds, whatever the folder holds: a regular file only
(a FIFO is opened without waiting, then refused like a device or a folder, links followed),
a JSON document of at most MAX_DOC_BYTES, a JSON line of at most MAX_LINE_BYTES (a longer one
is read past in pieces, never held). A reader's memory is then bounded by these limits and
the run's own number of records, not by a file's bytes."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

MAX_DOC_BYTES = 64 << 20  # run.json, summary.json, calibration.json...: surgecast writes < 1 MiB
MAX_LINE_BYTES = 16 << 20  # one record: about 1.4 million chunk times
_PIECE = 1 << 20


class UnreadableFile(ValueError):
    """A file that is not read: its message says why (the reader names the file)."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a socket" if stat.S_ISSOCK(mode) else "not a file"


def open_regular(path: str | Path) -> BinaryIO:
    """`path` opened for reading in binary if it is a regular file (after its links);
    UnreadableFile if it is anything else, OSError if it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO: no wait for a writer
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnreadableFile(f"not a regular file ({_kind(mode)}): never a run's file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_document(path: str | Path, limit: int = MAX_DOC_BYTES) -> bytes:
    """A whole document's bytes; UnreadableFile if it is not a regular file or over `limit`."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableFile(f"larger than {limit >> 20} MiB: not a document surgecast writes")
    return data


def lines(f: BinaryIO, limit: int = MAX_LINE_BYTES) -> Iterator[bytes | None]:
    """Each line of `f` (its newline kept), or None for a line over `limit` bytes, which is
    read past in pieces of a MiB."""
    while line := f.readline(limit + 1):
        if len(line) <= limit or line.endswith(b"\n"):
            yield line
            continue
        while (rest := f.readline(_PIECE)) and not rest.endswith(b"\n"):
            pass
        yield None
