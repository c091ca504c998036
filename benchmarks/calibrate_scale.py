"""Calibration's time and peak memory as a run grows: one request streaming 10k, 100k and 1M
tokens beside short ones, on a known linear engine (tests/long_runs.py), through the fit
(`calibrate`) and the step-speed pass (`step_speed`) that `surgecast calibrate` runs.

    python benchmarks/calibrate_scale.py [--sizes 10000 100000 1000000] [--before DIR]
                                         [--limit-s 1200]

Each measurement runs in a fresh interpreter (its peak RSS is its own). --before DIR also runs
each size on the code in DIR (an older checkout's simulator/ and scenarios/, e.g. from
`git archive`), the same records, for a before/after table. Columns: the long request's chunk
times (= engine steps), chunk times in the run, steps fitted of those timed, seconds (fit and
step speed; generating the records excluded), peak RSS (records included: `records MiB` is the
process once they are built), each fitted parameter +- its standard error, and the largest
|fitted - truth| / standard error of the step cost's three (the overhead is estimated from
every request, never thinned, and reads high by about the client's delay before a token).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ADMIT_PER_STEP = 0.01  # short requests admitted per step (about 0.5 decoding beside the long one)


def measure(steps: int) -> dict[str, Any]:
    """Calibrate a generated run of `steps` steps here (imports from sys.path as set up)."""
    import numpy as np

    from simulator.engine.core import EngineConfig
    from simulator.fit.calibrate import calibrate
    from simulator.fit.speed import step_speed
    from tests.long_runs import LongRun, long_run

    run = LongRun(steps, admit_per_step=ADMIT_PER_STEP, client_noise_s=0.0001)
    records = long_run(run)
    built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    cal = calibrate(records, EngineConfig(max_num_seqs=256, kv_cache_tokens=10**8))
    step_speed(records, cal.engine.cost)
    seconds = time.perf_counter() - started
    c = run.cost
    truth = np.array([run.overhead_s, c.base_s, c.per_decode_seq_s, c.per_prefill_token_s])
    se = cal.fit.stderr()
    return {
        "steps": steps,
        "chunks": sum(len(r.chunk_times) for r in records),
        "fitted": cal.fit.step_rows,
        "seen": getattr(cal.fit, "rows_seen", 0) or cal.fit.step_rows,
        "seconds": seconds,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "records_mib": built / 1024,
        "values": cal.fit.values.tolist(),
        "stderr": se.tolist(),
        "truth": truth.tolist(),
        "z": float(np.max(np.abs(cal.fit.values - truth)[1:] / np.where(se > 0, se, np.inf)[1:])),
    }


def one(steps: int, code: Path | None, limit_s: float) -> dict[str, Any] | None:
    """`measure(steps)` in a fresh interpreter on `code`'s simulator (None: this checkout's);
    None when it ran past `limit_s`."""
    paths = [str(code)] if code else []
    script = (
        f"import sys, json; sys.path[:0] = {[*paths, str(ROOT)]!r}; "
        "from benchmarks.calibrate_scale import measure; "
        f"print(json.dumps(measure({steps})))"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=limit_s,
            check=True,
            cwd=ROOT,
        )
    except subprocess.TimeoutExpired:
        return None
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


PARAMS = (("overhead", 1e3), ("base", 1e3), ("per decode seq", 1e3), ("per prompt token", 1e6))


def row(code: str, steps: int, m: dict[str, Any] | None, limit_s: float) -> list[str]:
    if m is None:
        return [code, f"{steps:,}", "", "", f"> {limit_s:.0f}", "", "", "", "", "", "", ""]
    fits = [
        f"{v * k:.4g} +- {s * k:.2g} ({t * k:.4g})"
        for (_, k), v, s, t in zip(PARAMS, m["values"], m["stderr"], m["truth"], strict=True)
    ]
    return [
        code,
        f"{steps:,}",
        f"{m['chunks']:,}",
        f"{m['fitted']:,} of {m['seen']:,}",
        f"{m['seconds']:.1f}",
        f"{m['peak_mib']:.0f}",
        f"{m['records_mib']:.0f}",
        *fits,
        f"{m['z']:.1f}",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--before", type=Path, help="an older checkout to run each size on as well")
    p.add_argument("--limit-s", type=float, default=1200.0, help="a measurement's time limit")
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from surgecast.tables import markdown

    codes: list[tuple[str, Path | None]] = [("after", None)]
    if a.before:
        codes.insert(0, ("before", a.before.resolve()))
    rows = []
    for steps in a.sizes:
        for name, code in codes:
            rows.append(row(name, steps, one(steps, code, a.limit_s), a.limit_s))
            print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    units = ("ms", "ms", "ms", "us")
    head = [
        "code",
        "long stream's chunk times",
        "chunk times in run",
        "steps fitted",
        "seconds",
        "peak RSS MiB",
        "records MiB",
        *(f"{n} {u} +- se (truth)" for (n, _), u in zip(PARAMS, units, strict=True)),
        "max abs z (step cost)",
    ]
    print(markdown(head, rows))


if __name__ == "__main__":
    main()
