"""Where built engines and generated models are kept, and a lock so only one process builds."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """`$SURGECAST_CACHE`, else `~/.cache/surgecast`."""
    env = os.environ.get("SURGECAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "surgecast"


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if missing), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
