"""Run surgecast's CLI on a fuzzed run folder in this process's image: each command in a child
forked from it (imports already done, so a command costs what it does, not a Python start),
killed at a time limit (a hang), its address space capped (a runaway allocation is a
MemoryError, not the machine's memory). A child reports its exit code or its traceback."""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALLOWED = {0, 2, 3, 99}  # the CLI's exit map for these commands: pass, bad input, invalid, failed
MEMORY_CAP = 4 << 30  # bytes of address space a command may map (RLIMIT_AS)
STDERR_KEPT = 4000
COMMANDS = ("calibrate", "report", "gate", "compare")


@dataclass(frozen=True)
class Outcome:
    command: str
    code: int | None  # None: a traceback, a hang, or the child died
    seconds: float
    peak_rss_kb: int
    traceback: str = ""  # the exception, for a traceback; "hang" or how it died otherwise
    hung: bool = False
    stderr: str = ""  # its last STDERR_KEPT characters

    @property
    def clean(self) -> bool:
        return self.code in ALLOWED


def argv(
    command: str, folder: Path, base: Path, out: Path, swap: bool, backtest: bool = True
) -> list[str]:
    """The command's arguments: the fuzzed folder against the intact one (`swap`: as the
    baseline rather than the candidate), outputs under `out`; calibrate back-tests (writing
    the folder's simulated.jsonl and backtest.json) unless `backtest` is False."""
    one, two = (folder, base) if swap else (base, folder)
    if command == "calibrate":
        skip = [] if backtest else ["--no-backtest"]
        return ["calibrate", str(folder), "-o", str(out / "calibration.json"), *skip]
    if command == "report":
        return ["report", str(folder)]
    if command == "gate":
        return ["gate", "--baseline", str(one), "--candidate", str(two), "--out", str(out / "g")]
    return ["compare", str(one), str(two), "--out", str(out / "c"), "--resamples", "200"]


def warm(base: Path, out: Path) -> None:
    """Run each command once on the intact folder here, so its imports, fonts and caches are
    in the image every child starts from; then freeze it (a child's collections copy
    nothing)."""
    from surgecast.cli.main import main

    copy = out / "warm"
    if not copy.exists():
        import shutil

        shutil.copytree(base, copy)
    for command in COMMANDS:
        sink = io.StringIO()
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            code = main(argv(command, copy, copy, out, False))
        if code not in ALLOWED:
            raise RuntimeError(f"{command} on the intact folder exited {code}:\n{sink.getvalue()}")
    gc.collect()
    gc.freeze()


def run(args: Sequence[str], limit_s: float, draw: bool = True) -> Outcome:
    """`surgecast ARGS` in a forked child, at most `limit_s` seconds; `draw` False builds the
    figures without drawing them (matplotlib's drawing is most of report's and gate's time)."""
    read, write = os.pipe()
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(read)
        _child(list(args), write, draw)
    os.close(write)
    message = b""
    hung = False
    with os.fdopen(read, "rb") as pipe:
        while True:
            left = limit_s - (time.monotonic() - started)
            if left <= 0 or not select.select([pipe], [], [], left)[0]:
                hung = True
                os.kill(pid, signal.SIGKILL)
                break
            data = pipe.read1(1 << 16)
            if not data:
                break
            message += data
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - started
    rss = int(usage.ru_maxrss)
    if hung:
        return Outcome(args[0], None, seconds, rss, "hang", hung=True)
    if not message:
        return Outcome(args[0], None, seconds, rss, f"child died (wait status {status})")
    result = json.loads(message)
    return Outcome(args[0], result["code"], seconds, rss, result["traceback"], False, result["err"])


def _child(args: list[str], write: int, draw: bool) -> None:
    code: int | None = None
    trace = ""
    err = tempfile.TemporaryFile()  # noqa: SIM115 (the child leaves by os._exit)
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
        if not draw:
            _undrawn()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os.dup2(err.fileno(), 2)
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115 (pytest's capture, if any, replaced)
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        from surgecast.cli.main import main

        try:
            code = main(args)
        except SystemExit as e:  # argparse's own exit
            code = e.code if isinstance(e.code, int) else 2
    except BaseException:
        trace = traceback.format_exc()[-4000:]
    with contextlib.suppress(BaseException):
        sys.stderr.flush()
        err.seek(max(0, os.fstat(err.fileno()).st_size - STDERR_KEPT))
        tail = err.read().decode("utf-8", "replace")
        os.write(write, json.dumps({"code": code, "traceback": trace, "err": tail}).encode())
    os._exit(0)


def _undrawn() -> None:
    """Figures built, never drawn: savefig writes a PNG signature alone, no layout is made."""
    from matplotlib.figure import Figure

    def savefig(self: Figure, fname: Any, **_: Any) -> None:
        if hasattr(fname, "write"):
            fname.write(PNG)
        else:
            Path(fname).write_bytes(PNG)

    Figure.savefig = savefig  # type: ignore[method-assign]
    Figure.tight_layout = lambda self, *_, **__: None  # type: ignore[method-assign]


PNG = b"\x89PNG\r\n\x1a\n"
