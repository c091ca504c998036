"""Start llama.cpp's `llama-server` on a free loopback port, read its limits, stop it.

`with LlamaServer(LlamaServerConfig(binary, model, slots=8)) as server:` waits for `/health`,
reads `/props` into `server.limits`, and on exit stops its process group (`targets.process`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from loadgen.fetch import fetch_json
from targets.errors import TargetError
from targets.process import ServerProcess, root_url


class LlamaServerError(TargetError):
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


DEFAULT_BATCH_TOKENS = 2048  # llama-server's default --batch-size: prompt tokens one step takes


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

    def engine_limits(self) -> dict[str, Any]:
        """The limits to record in run.json, in EngineConfig's terms, with where they came from."""
        return {
            "max_num_seqs": self.total_slots,
            "kv_cache_tokens": self.kv_cache_tokens,
            "max_batched_tokens": max(DEFAULT_BATCH_TOKENS, self.total_slots),
            "source": "llama-server /props",
        }

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


def get_json(url: str, timeout_s: float = 5.0) -> Any:
    """A side endpoint's JSON, bounded in time and size (`loadgen.fetch`)."""
    return fetch_json(url, timeout_s)


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


@dataclass
class LlamaServer(ServerProcess):
    """Context manager running one llama-server process; see the module's docstring."""

    name: ClassVar[str] = "llama-server"
    error: ClassVar[type[RuntimeError]] = LlamaServerError
    port_taken: ClassVar[str] = "bind"

    config: LlamaServerConfig
    base_url: str = ""  # http://127.0.0.1:PORT/v1 once started
    limits: ServerLimits | None = None
    startup_s: float = 0.0  # spawn to healthy
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def command(self, port: int) -> list[str]:
        return self.config.command(port)

    def check(self) -> None:
        cfg = self.config
        for path, what in ((cfg.binary, "binary"), (cfg.model, "model")):
            if not path.is_file():
                hint = " (run `make llama-server` or pass --build)" if what == "binary" else ""
                raise LlamaServerError(f"llama-server {what} not found: {path}{hint}")
        if not os.access(cfg.binary, os.X_OK):
            raise LlamaServerError(f"llama-server binary is not executable: {cfg.binary}")

    def ready(self) -> None:
        self.limits = read_limits(self.base_url)
