"""The live progress line of a load run."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from scenarios.records import RequestRecord

RECENT = 500  # successful requests the live TTFT percentiles cover


@dataclass
class RunProgress:
    """Counts, and the last RECENT successful TTFTs: memory stays flat however long the run
    (the records themselves are on disk)."""

    planned: int
    sent: int = 0
    in_flight: int = 0
    skipped: int = 0  # session turns never sent because an earlier turn failed
    done: int = 0
    errors: int = 0
    recent_ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))

    def add(self, record: RequestRecord) -> None:
        self.done += 1
        if record.status != "ok":
            self.errors += 1
        elif record.ttft is not None:
            self.recent_ttfts.append(record.ttft)

    def line(self, elapsed_s: float) -> str:
        if self.recent_ttfts:
            p50, p95 = np.percentile(np.asarray(self.recent_ttfts) * 1000.0, [50, 95])
            ttft = f"ttft p50 {p50:6.0f} ms  p95 {p95:6.0f} ms"
        else:
            ttft = "ttft p50      - ms  p95      - ms"
        rate = self.sent / elapsed_s if elapsed_s > 0 else 0.0
        return (
            f"[{elapsed_s:6.1f}s] sent {self.sent}/{self.planned}  rate {rate:5.1f}/s  "
            f"in flight {self.in_flight:3d}  done {self.done}  {ttft}  errors {self.errors}"
            + (f"  skipped {self.skipped}" if self.skipped else "")
        )
