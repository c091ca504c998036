"""The `surgecast` command's entry (the console script and `python -m surgecast`): the command
line, with a Ctrl-C at any moment, start-up included, an exit 130 said in one line.

While the command line is being imported a Ctrl-C is only noted (raising it into an import
could leave a half-imported module and a traceback), then honoured. An interrupted command
leaves with os._exit once its output is flushed: CPython marks an interrupt that passed
through C code running Python (some imports do) as unhandled, and would otherwise kill the
process with SIGINT at exit although the command handled it.
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # as surgecast.cli.exits; nothing heavy here


def main() -> int:
    noted: list[int] = []

    def note(signum: int, frame: FrameType | None) -> None:
        noted.append(signum)

    previous = signal.signal(signal.SIGINT, note)
    try:
        from surgecast.cli.main import main as command_line
    finally:
        signal.signal(signal.SIGINT, previous)
    if noted:
        print("interrupted while starting: nothing was sent", file=sys.stderr)
        return _leave(EXIT_INTERRUPTED)
    code = command_line()
    return _leave(code) if code in (EXIT_INTERRUPTED, EXIT_TERMINATED) else code


def _leave(code: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
