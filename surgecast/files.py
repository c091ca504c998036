"""Files surgecast writes into a run folder or an output folder: each written whole to a new
file beside it and renamed into place, so a killed process never leaves half a file, and a link
planted where it goes is replaced, never written through (it could point anywhere)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_whole(path: Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` whole, replacing what is there, links included."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except IsADirectoryError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise FileExistsError(f"{path} is a folder: cannot write the file there") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path
