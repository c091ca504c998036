"""The files a scenario names (itself, its traces and corpora): regular files a user means to
share, never a pipe or a device (reading one would hang or never end), nor the system's or a
process's private files (a scenario from someone else must not be able to send
/proc/self/environ, and the API key in it, to a target in every prompt)."""

from __future__ import annotations

import stat
from pathlib import Path

# resolved paths under these hold the system's and processes' secrets, never a corpus or trace
PRIVATE_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"), Path("/etc"), Path("/run"))
PRIVATE_DIRS = (".ssh", ".aws", ".gnupg", ".kube", ".docker", ".azure", ".config/gcloud")


def data_file_problem(path: Path) -> str | None:
    """Why `path` may not be read as a scenario's data file (None: it may), after following
    its links; the file must exist."""
    real = path.resolve()
    if any(real == root or root in real.parents for root in PRIVATE_ROOTS):
        return f"{real} is a system or process file, never a scenario's data: copy it elsewhere"
    text = real.as_posix()
    hidden = next((d for d in PRIVATE_DIRS if f"/{d}/" in text), None)
    if hidden:
        return f"{real} is in ~/{hidden}, where credentials live: never a scenario's data"
    try:
        mode = real.stat().st_mode
    except OSError as e:
        return f"cannot read file: {e.strerror or e}"
    if not stat.S_ISREG(mode):
        return "not a regular file (a pipe, a device or a folder would hang or never end)"
    return None
