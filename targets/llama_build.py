"""Build llama.cpp's `llama-server` once, from the C++ sources in the llama-cpp-python sdist.

The binary is cached under `<cache>/llama-server-<version>/llama-server`: built in a temporary
folder beside it, then renamed into place, under a file lock so two processes never build at once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from targets.cache import cache_root, file_lock
from targets.errors import TargetError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",  # one static binary: nothing to find at run time
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",  # the default downloads web-UI assets
    "-DLLAMA_OPENSSL=OFF",  # no HTTPS (this version has no curl option left: it is ignored)
]
LOG_TAIL = 15

Say = Callable[[str], None]


class BuildError(TargetError):
    """The binary is missing or could not be built; the message says what to do."""


def _quiet(text: str) -> None:
    pass


def server_dir(cache: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    return (cache or cache_root()) / f"llama-server-{version}"


def cached_server(cache: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Where the binary lives once built (it may not exist yet)."""
    return server_dir(cache, version) / "llama-server"


def ensure_server(
    *,
    build: bool = True,
    cache: Path | None = None,
    version: str = LLAMA_CPP_PYTHON_VERSION,
    jobs: int = 2,
    say: Say = _quiet,
) -> Path:
    """The cached binary; built first when missing and `build` is true, else BuildError."""
    binary = cached_server(cache, version)
    if _runnable(binary):
        return binary
    if not build:
        raise BuildError(
            f"llama-server is not built ({binary} is missing): run `make llama-server` "
            "or pass --build (several minutes on 2 cores)"
        )
    folder = binary.parent
    with file_lock(folder / ".build.lock"):
        if _runnable(binary):  # another process built it while we waited for the lock
            return binary
        _check_tools()
        started = time.monotonic()
        say(f"building llama-server from llama-cpp-python=={version} (several minutes on 2 cores)")
        with tempfile.TemporaryDirectory(dir=folder, prefix="build-") as tmp:
            work = Path(tmp)
            source = _fetch_sources(version, work, say)
            built = _compile(source, work / "build", jobs, folder / "build.log", say)
            staged = folder / "llama-server.tmp"
            shutil.copy2(built, staged)
            os.replace(staged, binary)  # atomic: readers see no binary or a whole one
        say(f"llama-server built in {time.monotonic() - started:.0f} s: {binary}")
    return binary


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _check_tools() -> None:
    missing = [t for t in ("cmake", "c++", "cc") if shutil.which(t) is None]
    if missing:
        raise BuildError(
            f"cannot build llama-server: {', '.join(missing)} not found on PATH "
            "(install cmake and a C/C++ compiler, e.g. `apt-get install cmake g++`)"
        )


def _run(cmd: list[str], log: Path, what: str, cwd: Path | None = None) -> None:
    """Run `cmd`, appending its output to `log`; BuildError with the log's tail on failure."""
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        code = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd).returncode
    if code != 0:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()[-LOG_TAIL:]
        raise BuildError(
            f"{what} failed (exit {code}); full log: {log}\n" + "\n".join(f"  {x}" for x in lines)
        )


def _fetch_sources(version: str, work: Path, say: Say) -> Path:
    """Download the sdist with pip and unpack its vendored llama.cpp; returns that folder."""
    say(f"downloading the llama-cpp-python=={version} sdist (about 75 MB) from PyPI")
    log = work / "download.log"
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            f"llama-cpp-python=={version}",
            "-d",
            str(work),
        ],
        log,
        f"pip download llama-cpp-python=={version} (needs network access to PyPI)",
    )
    archives = list(work.glob("llama_cpp_python-*.tar.gz"))
    if not archives:
        raise BuildError(f"pip download left no llama_cpp_python sdist in {work}")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(archives[0]) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise BuildError(f"{archives[0].name} holds no {prefix}: not the expected sdist")
        tar.extractall(work, members=members, filter="data")
    archives[0].unlink()
    return work / prefix


def _compile(source: Path, build: Path, jobs: int, log: Path, say: Say) -> Path:
    log.write_text("", encoding="utf-8")
    say(f"compiling llama-server with {jobs} jobs (log: {log})")
    _run(["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS], log, "cmake configure")
    _run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
        log,
        "cmake build of llama-server",
    )
    found = [p for p in build.rglob("llama-server") if _runnable(p)]
    if not found:
        raise BuildError(f"the build finished but left no llama-server binary under {build}")
    return found[0]
