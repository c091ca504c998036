"""SIGINT and SIGTERM while a command runs: each is noted, then raised where the program is, as
KeyboardInterrupt (`Terminated` for SIGTERM), so the command stops its children and marks its
run folder on the way out (exit 130, 143).

Python cannot pass an exception on from some places (a finaliser, a callback from C code such
as numpy's): it prints "Exception ignored in ..." with a traceback and goes on, and the signal
would be lost. There the interruption is dropped silently, and `honour_pending` (called between
a run's steps) raises it again. The state lives in the installed handler, nowhere else. Cheap to
import: the entry point installs it before the command line is imported.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM: handled as Ctrl-C is (servers stopped, run folders marked), exit 143."""

    signum = signal.SIGTERM


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception a stop signal raises."""
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def signal_of(e: BaseException) -> int:
    """The signal behind an interruption: SIGTERM for `Terminated`, else SIGINT."""
    return int(getattr(e, "signum", signal.SIGINT))


class StopSignals:
    """The handler of both stop signals: notes the signal; raises it unless `raising` is off
    (while modules are imported a raise could leave one half-imported)."""

    def __init__(self, raising: bool = True):
        self.raising = raising
        self.noted: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.noted = signum
        if self.raising:
            _quiet_hub()
            raise interruption(signum)

    def honour(self) -> None:
        """Raise the signal noted, if one was (dropped where Python could not pass it on)."""
        if self.noted is not None:
            raise interruption(self.noted)


def install(raising: bool = True) -> StopSignals:
    """Both stop signals handled by a new `StopSignals` for the rest of the process (the
    entry point's: never restored, so no instant before the exit is left unhandled)."""
    handler = StopSignals(raising)
    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    return handler


@contextmanager
def stop_signals(raising: bool = True) -> Iterator[StopSignals | None]:
    """Both stop signals handled by one `StopSignals` while the block runs (None off the main
    thread, where signals cannot be handled); the previous handlers after."""
    if threading.current_thread() is not threading.main_thread():
        yield None
        return
    handler = StopSignals(raising)
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    hook = sys.unraisablehook

    def unraisable(u: Any) -> None:  # an interruption Python could not raise: kept, unsaid
        if not (isinstance(u.exc_value, KeyboardInterrupt) and handler.noted is not None):
            hook(u)

    sys.unraisablehook = unraisable
    try:
        yield handler
    finally:
        sys.unraisablehook = hook
        for s, h in previous.items():
            signal.signal(s, h)


def _quiet_hub() -> None:
    """Once gevent runs (the send step imports Locust), a signal can come while its hub, not
    the program, is running: the hub passes the interruption on to the program, as wanted, but
    prints it with a traceback first unless told it is no error (its NOT_ERROR)."""
    hub_module = sys.modules.get("gevent.hub")
    hub = hub_module._get_hub() if hub_module is not None else None  # this thread's, if any
    if hub is not None and KeyboardInterrupt not in hub.NOT_ERROR:
        hub.NOT_ERROR = (*hub.NOT_ERROR, KeyboardInterrupt)


def honour_pending() -> None:
    """Raise a stop signal the installed handler noted but Python dropped (see above); a
    signal that reached its handler otherwise has raised already."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, StopSignals) and handler.raising:
        handler.honour()
