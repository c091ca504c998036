"""Child processes surgecast starts (generator workers, engine servers): each in a session of its
own, so a terminal's Ctrl-C reaches surgecast alone (which stops them in order), and on Linux
sent SIGTERM by the kernel when surgecast dies, even by SIGKILL, so none is left running."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when its parent dies."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def child_options() -> dict[str, Any]:
    """subprocess.Popen's options for such a child."""
    linux = sys.platform == "linux"
    return {"start_new_session": True, "preexec_fn": _die_with_parent if linux else None}


def own_session() -> None:
    """The same, for a child started without exec (multiprocessing's spawn), called first."""
    os.setsid()
    if sys.platform == "linux":
        _die_with_parent()
