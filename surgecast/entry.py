"""The `surgecast` command's entry (the console script and `python -m surgecast`): the command
line, with a Ctrl-C or a SIGTERM at any moment, start-up included, an exit 130 or 143 said in
one line.

The handler (surgecast.interrupts) is installed first and stays to the exit. While the command
line is being imported a stop signal is only noted (raising it into an import could leave a
half-imported module and a traceback), then honoured. An interrupted
command leaves with os._exit once its output is flushed: CPython marks an interrupt that passed
through C code running Python (some imports do) as unhandled, and would otherwise kill the
process with SIGINT at exit although the command handled it.
"""

from __future__ import annotations

import os
import signal
import sys

from surgecast.interrupts import install, signal_of

EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # as surgecast.cli.exits; nothing heavy here
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, as a shell shows a reader that went away


def main() -> int:
    handler = install(raising=False)  # noted only while the command line is imported
    try:
        from surgecast.cli.main import main as command_line

        handler.raising = True  # and raised from here on, wherever the program is
        if handler.noted is not None:
            name = signal.Signals(handler.noted).name
            print(f"interrupted ({name}) while starting: nothing was sent", file=sys.stderr)
            return _leave(128 + handler.noted)
        code = command_line()  # it handles its own (exit 130 or 143, its run folder marked)
        handler.raising = False
    except BrokenPipeError:  # `surgecast catalog | head`: the reader left; stop without a word
        handler.raising = False
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return _leave(EXIT_BROKEN_PIPE)
    except KeyboardInterrupt as e:  # one just before or after the command line's handling
        handler.raising = False
        print("interrupted: records written so far are kept", file=sys.stderr)
        return _leave(128 + signal_of(e))
    if handler.noted is not None and code not in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        return _leave(128 + handler.noted)  # one that came as the command ended
    return _leave(code) if code in (EXIT_INTERRUPTED, EXIT_TERMINATED) else code


def _leave(code: int) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
