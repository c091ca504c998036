"""The forecast's progress: one bar redrawn in place on a terminal, one line per scale elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from simulator.forecast.search import Evaluation

WIDTH = 24


class ForecastBar:
    """Called with each fleet the forecast evaluates; the bar fills one share per scale."""

    def __init__(self, scales: list[float], stream: TextIO = sys.stderr):
        self.scales = sorted(scales)
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.fleets = 0
        self._scale: float | None = None
        self._best: dict[float, int] = {}  # lowest passing fleet so far, per scale
        self._tried_here = 0
        self._last_at = self.started

    def __call__(self, scale: float, evaluation: Evaluation) -> None:
        if scale != self._scale:
            self._finish_scale()
            self._scale, self._tried_here = scale, 0
        self.fleets += 1
        self._tried_here += 1
        self._last_at = time.monotonic()  # when the scale's latest fleet was done
        if evaluation.passed:
            self._best[scale] = min(self._best.get(scale, evaluation.replicas), evaluation.replicas)
        if self.tty:
            self.stream.write("\r" + self._line(evaluation) + "\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        self._finish_scale()
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _line(self, last: Evaluation) -> str:
        assert self._scale is not None
        done = self.scales.index(self._scale) + min(self._tried_here / 8.0, 0.9)
        filled = round(WIDTH * done / len(self.scales))
        verdict = (
            "meets SLOs"
            if last.passed
            else "misses SLOs"
            if last.simulated
            else f"over max load ({last.load:.0%} of saturation)"
        )
        return (
            f"forecast [{'#' * filled}{'.' * (WIDTH - filled)}] x{self._scale:g}: "
            f"{_replicas(last.replicas)} {verdict}  "
            f"({_fleets(self.fleets)} tried, {time.monotonic() - self.started:.0f} s)"
        )

    def _finish_scale(self) -> None:
        scale = self._scale
        if scale is None:
            return
        best = self._best.get(scale)
        found = _replicas(best) if best is not None else "not met"
        line = (
            f"forecast x{scale:g}: {found} ({_fleets(self._tried_here)} tried, "
            f"{self._last_at - self.started:.0f} s so far)"
        )
        self.stream.write(("\r" + line + "\x1b[K\n") if self.tty else line + "\n")
        self.stream.flush()
        self._scale = None


def _replicas(n: int) -> str:
    return f"{n} replica" + ("" if n == 1 else "s")


def _fleets(n: int) -> str:
    return f"{n} fleet" + ("" if n == 1 else "s")
