"""How surgecast talks to a person: results on stdout, progress and warnings on stderr."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

Say = Callable[[str], None]  # a step's progress line


def say_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def out(text: str) -> None:
    """A result: a table, a path."""
    print(text, flush=True)


def warn(lines: Sequence[str]) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr, flush=True)
