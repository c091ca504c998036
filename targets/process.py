"""A real engine's server process, as surgecast runs one: on loopback, in its own process group
(a Ctrl-C at the terminal reaches surgecast, not it), dying with surgecast, logging to a temporary
file whose tail every error quotes, healthy once `/health` answers 200, stopped as a group."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

from loadgen.children import child_options

PORT_TRIES = 3  # another process may take the free port between probing and binding it


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def root_url(base_url: str) -> str:
    """The server's root: the OpenAI base URL without its /v1."""
    return base_url.rstrip("/").removesuffix("/v1")


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is left (a reaped leader leaves its group behind)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


class ServerProcess(ABC):
    """What every engine server shares; a subclass (a dataclass with `config`, `base_url`,
    `startup_s`, `proc` and `_log_dir` fields) gives its name, error type and command."""

    name: ClassVar[str]  # as messages call it
    error: ClassVar[type[RuntimeError]]
    port_taken: ClassVar[str]  # what its log says when the port was taken (lower case)
    stop_grace_s: ClassVar[float] = 10.0  # SIGTERM, then SIGKILL after this
    log_lines: ClassVar[int] = 12

    config: Any  # with host and start_timeout_s
    base_url: str
    startup_s: float
    proc: subprocess.Popen[bytes] | None
    _log_dir: tempfile.TemporaryDirectory[str] | None

    @abstractmethod
    def command(self, port: int) -> list[str]:
        """The server's command line, listening on `port`."""

    def env(self) -> dict[str, str] | None:
        return None  # the parent's

    @abstractmethod
    def check(self) -> None:
        """Raise `error` when the server cannot be started at all (missing files)."""

    @abstractmethod
    def ready(self) -> None:
        """Once healthy: read what the server says of itself."""

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def log_path(self) -> Path | None:
        return Path(self._log_dir.name) / "server.log" if self._log_dir else None

    def start(self) -> None:
        """Spawn the server and wait until it is healthy; `error` if it is not."""
        self.check()
        self._log_dir = tempfile.TemporaryDirectory(prefix="surgecast-server-")
        for attempt in range(PORT_TRIES):
            try:
                self._spawn(free_port(self.config.host))
                return
            except self.error:
                self.stop()
                if attempt == PORT_TRIES - 1 or self.port_taken not in self.log_tail().lower():
                    self.close()
                    raise
            except BaseException:
                self.close()
                raise

    def _spawn(self, port: int) -> None:
        assert self.log_path is not None
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(),
                **child_options(),
            )
        self.base_url = f"http://{self.config.host}:{port}/v1"
        self._wait_healthy(started)
        self.startup_s = time.monotonic() - started
        self.ready()

    def _wait_healthy(self, started: float) -> None:
        health = root_url(self.base_url) + "/health"
        timeout = self.config.start_timeout_s
        while time.monotonic() - started < timeout:
            if not self.alive():
                raise self.error(self.death_message("exited while starting"))
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.05)
        raise self.error(
            f"{self.name} at {self.base_url} not healthy within {timeout:g} s (a busy machine "
            f"starts it slower); log tail:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int | None = None) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(f"  {x}" for x in text[-(lines or self.log_lines) :])

    def death_message(self, when: str) -> str:
        code = self.proc.poll() if self.proc else None
        return f"{self.name} {when} (exit code {code}); log tail:\n{self.log_tail()}"

    def stop(self) -> None:
        """SIGTERM the process group, SIGKILL what is left after `stop_grace_s`; keeps the
        exit code for `death_message`."""
        proc = self.proc
        if proc is None or not _group_alive(proc.pid):
            return
        os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace_s
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never looks empty
            time.sleep(0.05)
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def close(self) -> None:
        """Stop the server and delete its log; idempotent."""
        self.stop()
        self.proc = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
