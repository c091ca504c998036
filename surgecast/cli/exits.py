"""The command line's exit codes, and the errors that choose one."""

from __future__ import annotations

from surgecast.interrupts import Terminated as Terminated  # SIGTERM's, exit 143

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # a scenario, file or flag is wrong: nothing was sent
EXIT_INVALID = 3  # the run cannot be trusted, or its target could not be reached or started
EXIT_SLO = 99  # an SLO or a regression budget failed
EXIT_INTERRUPTED, EXIT_TERMINATED = 130, 143  # 128 + SIGINT, SIGTERM


class BadInput(Exception):
    """A user error: printed as is, exit code 2."""
