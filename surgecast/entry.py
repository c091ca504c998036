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
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell shows a reader that went away


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
    try:
        code = command_line()
    except BrokenPipeError:  # `surgecast catalog | head`: the reader left; stop without a word
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _leave(EXIT_BROKEN_PIPE)
    return _leave(code) if code in (EXIT_INTERRUPTED, EXIT_TERMINATED) else code


def _leave(code: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
