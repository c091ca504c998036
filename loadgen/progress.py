"""The live progress line of a load run."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from scenarios.records import RequestRecord


@dataclass
class RunProgress:
    planned: int
    sent: int = 0
    in_flight: int = 0
    skipped: int = 0  # session turns never sent because an earlier turn failed
    finished: list[RequestRecord] = field(default_factory=list)

    def line(self, elapsed_s: float) -> str:
        ttfts = [r.ttft for r in self.finished[-500:] if r.status == "ok" and r.ttft is not None]
        errors = sum(r.status != "ok" for r in self.finished)
        if ttfts:
            p50, p95 = np.percentile(np.asarray(ttfts) * 1000.0, [50, 95])
            ttft = f"ttft p50 {p50:6.0f} ms  p95 {p95:6.0f} ms"
        else:
            ttft = "ttft p50      - ms  p95      - ms"
        rate = self.sent / elapsed_s if elapsed_s > 0 else 0.0
        return (
            f"[{elapsed_s:6.1f}s] sent {self.sent}/{self.planned}  rate {rate:5.1f}/s  "
            f"in flight {self.in_flight:3d}  done {len(self.finished)}  {ttft}  errors {errors}"
            + (f"  skipped {self.skipped}" if self.skipped else "")
        )
