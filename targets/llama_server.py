"""Start llama.cpp's `llama-server` on a free loopback port, read its limits, stop it.

`with LlamaServer(LlamaServerConfig(binary, model, slots=8)) as server:` waits for `/health`,
reads `/props` into `server.limits`, and on exit terminates the process (then kills it).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

LOG_TAIL_LINES = 12
PORT_TRIES = 3


class LlamaServerError(RuntimeError):
    """llama-server is missing, did not start, or died; the message says what happened."""


@dataclass(frozen=True)
class LlamaServerConfig:
    binary: Path
    model: Path
    slots: int = 4  # -np: parallel sequences batched continuously (1: a strict FIFO server)
    ctx: int = 4096  # -c: KV-cache tokens in all, split evenly across the slots
    threads: int = 2
    alias: str = "surgecast-reference"  # the model name /v1/models lists
    host: str = "127.0.0.1"
    start_timeout_s: float = 60.0
    extra_args: tuple[str, ...] = ()

    def command(self, port: int) -> list[str]:
        return [
            str(self.binary),
            *("-m", str(self.model), "-np", str(self.slots), "-c", str(self.ctx)),
            *("-t", str(self.threads), "--host", self.host, "--port", str(port)),
            *("--alias", self.alias, "--metrics", "--cont-batching", "--no-kv-unified"),
            *self.extra_args,
        ]


@dataclass(frozen=True)
class ServerLimits:
    """The batch limits the server reports (`/props`), in the engine model's terms."""

    total_slots: int  # the most sequences decoded together (vLLM's max_num_seqs)
    n_ctx_slot: int  # the most tokens (prompt + output) one request may hold
    model_alias: str = ""
    build_info: str = ""

    @property
    def kv_cache_tokens(self) -> int:
        """KV capacity in all: each slot owns its own n_ctx_slot tokens (no unified cache)."""
        return self.total_slots * self.n_ctx_slot

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kv_cache_tokens": self.kv_cache_tokens}

    @classmethod
    def from_props(cls, props: dict[str, Any]) -> ServerLimits:
        try:
            slots = int(props["total_slots"])
            n_ctx = int(props["default_generation_settings"]["n_ctx"])
        except (KeyError, TypeError, ValueError) as e:
            raise LlamaServerError(
                f"/props lacks the slot limits ({e!r}): not llama-server?"
            ) from None
        return cls(
            slots, n_ctx, str(props.get("model_alias", "")), str(props.get("build_info", ""))
        )


def root_url(base_url: str) -> str:
    """The server root of an OpenAI base URL (`http://h:p/v1` -> `http://h:p`)."""
    return base_url.rstrip("/").removesuffix("/v1")


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return json.load(r)


def read_limits(base_url: str, timeout_s: float = 5.0) -> ServerLimits:
    """The limits a running llama-server reports at `/props`."""
    try:
        props = get_json(root_url(base_url) + "/props", timeout_s)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise LlamaServerError(f"cannot read {root_url(base_url)}/props: {e}") from None
    return ServerLimits.from_props(props)


def probe_limits(base_url: str, timeout_s: float = 2.0) -> ServerLimits | None:
    """The limits if `base_url` is a llama-server (it answers `/props` with slots), else None."""
    try:
        return read_limits(base_url, timeout_s)
    except LlamaServerError:
        return None


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when surgecast dies, even by SIGKILL."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class LlamaServer:
    """Context manager running one llama-server process; see the module's docstring."""

    config: LlamaServerConfig
    base_url: str = ""  # http://127.0.0.1:PORT/v1 once started
    limits: ServerLimits | None = None
    startup_s: float = 0.0  # spawn to healthy
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def __enter__(self) -> LlamaServer:
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
        return Path(self._log_dir.name) / "llama-server.log" if self._log_dir else None

    def start(self) -> None:
        """Spawn the server and wait until it is healthy; LlamaServerError if it is not."""
        cfg = self.config
        for path, what in ((cfg.binary, "binary"), (cfg.model, "model")):
            if not path.is_file():
                hint = " (run `make llama-server` or pass --build)" if what == "binary" else ""
                raise LlamaServerError(f"llama-server {what} not found: {path}{hint}")
        if not os.access(cfg.binary, os.X_OK):
            raise LlamaServerError(f"llama-server binary is not executable: {cfg.binary}")
        self._log_dir = tempfile.TemporaryDirectory(prefix="surgecast-llama-")
        for attempt in range(PORT_TRIES):  # another process may take the free port first
            try:
                self._spawn(free_port(cfg.host))
                return
            except LlamaServerError:
                self.stop()
                if attempt == PORT_TRIES - 1 or "bind" not in self.log_tail().lower():
                    self.close()
                    raise
            except BaseException:
                self.close()
                raise

    def _spawn(self, port: int) -> None:
        cfg = self.config
        assert self.log_path is not None
        started = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cfg.command(port),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C at the terminal reaches surgecast, not it
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.base_url = f"http://{cfg.host}:{port}/v1"
        self._wait_healthy(started)
        self.startup_s = time.monotonic() - started
        self.limits = read_limits(self.base_url)

    def _wait_healthy(self, started: float) -> None:
        health = root_url(self.base_url) + "/health"
        while time.monotonic() - started < self.config.start_timeout_s:
            if not self.alive():
                raise LlamaServerError(self.death_message("exited while starting"))
            try:
                with urllib.request.urlopen(health, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass  # not listening yet, or 503 while the model loads
            time.sleep(0.05)
        raise LlamaServerError(
            f"llama-server at {self.base_url} not healthy within "
            f"{self.config.start_timeout_s:g} s; log tail:\n{self.log_tail()}"
        )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        path = self.log_path
        if path is None or not path.exists():
            return ""
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        return "\n".join(f"  {x}" for x in text)

    def death_message(self, when: str) -> str:
        code = self.proc.poll() if self.proc else None
        return f"llama-server {when} (exit code {code}); log tail:\n{self.log_tail()}"

    def stop(self) -> None:
        """Terminate, then kill after 10 s; keeps the exit code for `death_message`."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        """Stop the server and delete its log; idempotent."""
        self.stop()
        self.proc = None
        if self._log_dir is not None:
            self._log_dir.cleanup()
            self._log_dir = None
