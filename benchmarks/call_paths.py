"""How one live `surgecast run` crosses between the project's packages, from a call trace.

Runs `surgecast run SCENARIO --duration S` in this process under a profiler and counts, among
calls from one project function to another, the distinct caller -> callee pairs whose top-level
packages differ (scenarios, loadgen, simulator, targets, surgecast), and the modules of each
package the run's path visits. Calls are to functions and methods by name: module imports,
dataclasses' generated methods, properties read as attributes and protocol methods (`len`, `str`,
`with`) are not counted. The reference target runs
in a child process: its own calls are not part of the path.

    python benchmarks/call_paths.py [SCENARIO] [--duration 3] [--show]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from collections import Counter
from functools import cached_property
from pathlib import Path
from types import FrameType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("scenarios", "loadgen", "simulator", "targets", "surgecast")


def _module(frame: FrameType) -> str | None:
    """The project module a frame runs in (None: a library's, or the standard library's)."""
    name = frame.f_globals.get("__name__", "")
    top = name.split(".", 1)[0]
    return name if top in PACKAGES else None


def _is_call(frame: FrameType) -> bool:
    """A function or method the code calls by name: not a module's import, a dataclass's
    generated method, or a property read as an attribute."""
    code = frame.f_code
    if code.co_name == "<module>" or "__create_fn__" in code.co_qualname:
        return False
    if code.co_name.startswith("__") and code.co_name != "__init__":
        return False  # a protocol's method (len(), str(), with): not called by name
    owner, _, name = code.co_qualname.rpartition(".")
    cls = frame.f_globals.get(owner) if owner and "<" not in owner else None
    attr = vars(cls).get(name) if isinstance(cls, type) else None
    return not isinstance(attr, property | cached_property)


def trace_run(argv: list[str]) -> tuple[set[tuple[str, str]], Counter[str]]:
    """Cross-package (caller, callee) function pairs of one CLI run, and calls per module."""
    edges: set[tuple[str, str]] = set()
    calls: Counter[str] = Counter()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        callee = _module(frame)
        if callee is None:
            return
        calls[callee] += 1
        if not _is_call(frame):
            return
        caller_frame = frame.f_back
        while caller_frame is not None and _module(caller_frame) is None:
            caller_frame = caller_frame.f_back  # through library frames (Locust, gevent)
        if caller_frame is None:
            return
        caller = _module(caller_frame)
        assert caller is not None
        if caller.split(".")[0] != callee.split(".")[0]:
            edges.add(
                (
                    f"{caller}.{caller_frame.f_code.co_qualname}",
                    f"{callee}.{frame.f_code.co_qualname}",
                )
            )

    from surgecast.cli import main

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        code = main(argv)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    print(f"surgecast exited {code}", file=sys.stderr)
    return edges, calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios" / "chatbot.yaml"))
    p.add_argument("--duration", default="3")
    p.add_argument("--show", action="store_true", help="list every crossing")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["run", a.scenario, "--duration", a.duration, "--out", f"{tmp}/run", "-q"]
        edges, calls = trace_run([*argv, "--no-report"])
    modules = sorted(calls)
    print("| package | modules visited | calls |")
    print("|---|---|---|")
    for package in PACKAGES:
        mine = [m for m in modules if m.split(".")[0] == package]
        print(f"| {package} | {len(mine)} | {sum(calls[m] for m in mine):,} |")
    pairs = Counter((a.split(".")[0], b.split(".")[0]) for a, b in edges)
    orchestrator = {(a, b) for a, b in edges if a.startswith("surgecast.") and "<module>" not in b}
    print(
        f"\ncross-package caller -> callee pairs: {len(edges)}; from surgecast's own "
        f"functions (imports apart): {len(orchestrator)}"
    )
    for (src, dst), n in sorted(pairs.items()):
        print(f"  {src} -> {dst}: {n}")
    if a.show:
        for caller, callee in sorted(edges):
            print(f"    {caller} -> {callee}")


if __name__ == "__main__":
    main()
