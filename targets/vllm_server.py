"""Start vLLM (CPU build, its own venv) on a free loopback port, read its limits, stop it.

`with VllmServer(VllmConfig(model_dir, max_num_seqs=8)) as server:` waits for `/health` (about
30 s to a minute on 2 cores), reads `server.limits` (KV blocks, block size and prefix caching from
the `vllm:cache_config_info` metric, max_model_len from `/v1/models`), and on exit terminates the
whole process group (API server, engine core, worker), then kills it.
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

from loadgen.fetch import fetch
from loadgen.telemetry import parse_prometheus
from targets.errors import TargetError
from targets.llama_server import get_json
from targets.process import ServerProcess, root_url

REPO = Path(__file__).resolve().parents[1]
INSTALL_HINT = "run `make vllm` (a separate venv, about 4 min and 2.5 GB)"


class VllmServerError(TargetError):
    """vLLM is missing, did not start, or died; the message says what to do."""


def vllm_venv() -> Path:
    """`$SURGECAST_VLLM_VENV`, else the repository's `.venv-vllm` (what `make vllm` creates)."""
    env = os.environ.get("SURGECAST_VLLM_VENV")
    return Path(env) if env else REPO / ".venv-vllm"


def vllm_python() -> Path:
    """The interpreter of the vLLM venv; VllmServerError naming `make vllm` if it is missing."""
    python = vllm_venv() / "bin" / "python"
    if not python.is_file():
        raise VllmServerError(f"vLLM is not installed ({python} not found): {INSTALL_HINT}")
    return python


BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags for native bfloat16 arithmetic


def cpu_dtype(cpuinfo: str | None = None) -> str:
    """The dtype vLLM should compute in on this CPU: its `auto` picks bfloat16, which without
    native bf16 units runs 3-5x slower than float32 (measured on a 2-core AVX2 machine)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return "auto"
    flags = {f for line in cpuinfo.splitlines() if line.startswith("flags") for f in line.split()}
    return "auto" if flags & set(BF16_FLAGS) else "float32"


@dataclass(frozen=True)
class VllmConfig:
    model: Path  # a model directory (config.json, tokenizer); weights are random (dummy)
    python: Path = field(default_factory=lambda: vllm_venv() / "bin" / "python")
    alias: str = "surgecast-reference"  # the model name /v1/models lists
    max_num_seqs: int = 8  # sequences batched together
    max_num_batched_tokens: int = 2048  # tokens one step computes (vLLM's CPU default)
    kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE: whole GiB of KV cache
    max_model_len: int = 4096  # prompt + output tokens of one request
    prefix_caching: bool = True
    block_size: int | None = None  # tokens per KV block (None: vLLM's choice, 128 on CPU)
    stream_interval: int = 1  # tokens per streamed chunk
    dtype: str = field(default_factory=cpu_dtype)  # weights and activations (--dtype)
    host: str = "127.0.0.1"
    start_timeout_s: float = 240.0
    extra_args: tuple[str, ...] = ()

    def command(self, port: int) -> list[str]:
        cmd = [
            str(self.python),
            *("-m", "vllm.entrypoints.openai.api_server"),  # `vllm serve` fails: dist is vllm-cpu
            *("--model", str(self.model), "--served-model-name", self.alias),
            *("--load-format", "dummy", "--enforce-eager"),
            *("--host", self.host, "--port", str(port)),
            *("--max-num-seqs", str(self.max_num_seqs)),
            *("--max-num-batched-tokens", str(self.max_num_batched_tokens)),
            *("--max-model-len", str(self.max_model_len)),
            *("--dtype", self.dtype),
            "--enable-prefix-caching" if self.prefix_caching else "--no-enable-prefix-caching",
            *("--stream-interval", str(self.stream_interval)),
            "--enable-prompt-tokens-details",  # usage says how many prompt tokens were cached
        ]
        if self.block_size:
            cmd += ["--block-size", str(self.block_size)]
        return [*cmd, *self.extra_args]

    def env(self) -> dict[str, str]:
        """The parent's environment, offline, without usage reporting, with the KV cache size."""
        return {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
        }


@dataclass(frozen=True)
class CacheInfo:
    """What a running vLLM reports about its KV cache and context (any vLLM, external too)."""

    block_size: int
    num_blocks: int  # `num_gpu_blocks`, also on CPU
    prefix_caching: bool
    kv_cache_tokens: int
    max_model_len: int
    version: str = ""

    def engine_limits(self) -> dict[str, Any]:
        """The limits any vLLM reports about its cache, in EngineConfig's terms (an external
        one's: these only)."""
        return {
            "kv_cache_tokens": self.kv_cache_tokens,
            "block_size": self.block_size,
            "enable_prefix_caching": self.prefix_caching,
            "source": "vLLM /metrics vllm:cache_config_info",
        }


@dataclass(frozen=True)
class VllmLimits:
    """The server's limits: what it reports (CacheInfo) plus the scheduler flags it was given."""

    cache: CacheInfo
    max_num_seqs: int
    max_num_batched_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self.cache),
            "max_num_seqs": self.max_num_seqs,
            "max_num_batched_tokens": self.max_num_batched_tokens,
        }

    def engine_limits(self) -> dict[str, Any]:
        """The limits to record in run.json: the cache's, and the scheduler flags given."""
        return {
            "max_num_seqs": self.max_num_seqs,
            "max_batched_tokens": self.max_num_batched_tokens,
            **self.cache.engine_limits(),
            "source": "vLLM flags given by surgecast; /metrics vllm:cache_config_info",
        }


def _label_set(metrics: dict[str, float], name: str) -> dict[str, str]:
    """The labels of the first sample of `name` (an info metric: its value is always 1)."""
    for key in metrics:
        if key.startswith(name + "{"):
            body = key[len(name) + 1 : -1]
            pairs = (p.split("=", 1) for p in body.split('",') if "=" in p)
            return {k.strip(): v.strip().strip('"') for k, v in pairs}
    return {}


def cache_info(metrics_text: str, models: dict[str, Any], version: str = "") -> CacheInfo:
    """CacheInfo from a /metrics text and a /v1/models answer; VllmServerError if absent."""
    labels = _label_set(parse_prometheus(metrics_text), "vllm:cache_config_info")
    try:
        block_size = int(labels["block_size"])
        blocks = int(labels["num_gpu_blocks"])
        max_len = int(models["data"][0]["max_model_len"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise VllmServerError(
            f"no vLLM cache limits ({e!r} missing from vllm:cache_config_info or /v1/models): "
            "not vLLM, or not started yet?"
        ) from None
    tokens = labels.get("kv_cache_size_tokens", "")
    return CacheInfo(
        block_size=block_size,
        num_blocks=blocks,
        prefix_caching=labels.get("enable_prefix_caching") == "True",
        kv_cache_tokens=int(tokens) if tokens.isdigit() else blocks * block_size,
        max_model_len=max_len,
        version=version,
    )


def read_cache_info(base_url: str, timeout_s: float = 5.0) -> CacheInfo:
    """The cache limits a running vLLM reports at `/metrics` and `/v1/models`."""
    root = root_url(base_url)
    try:
        text = fetch(root + "/metrics", timeout_s).decode("utf-8", "replace")
        models = get_json(root + "/v1/models", timeout_s)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise VllmServerError(f"cannot read {root}/metrics or /v1/models: {e}") from None
    try:
        version = str(get_json(root + "/version", timeout_s).get("version", ""))
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        version = ""  # optional
    return cache_info(text, models, version)


def probe_cache_info(base_url: str, timeout_s: float = 2.0) -> CacheInfo | None:
    """The cache limits if `base_url` is a vLLM server, else None."""
    try:
        return read_cache_info(base_url, timeout_s)
    except VllmServerError:
        return None


@dataclass
class VllmServer(ServerProcess):
    """Context manager running one vLLM API server; see the module's docstring."""

    name: ClassVar[str] = "vLLM"
    error: ClassVar[type[RuntimeError]] = VllmServerError
    port_taken: ClassVar[str] = "address already in use"
    stop_grace_s: ClassVar[float] = 20.0  # the API server, the engine core and its worker
    log_lines: ClassVar[int] = 15

    config: VllmConfig
    base_url: str = ""  # http://127.0.0.1:PORT/v1 once started
    limits: VllmLimits | None = None
    startup_s: float = 0.0  # spawn to healthy
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def command(self, port: int) -> list[str]:
        return self.config.command(port)

    def env(self) -> dict[str, str]:
        return self.config.env()

    def check(self) -> None:
        cfg = self.config
        if not cfg.python.is_file():
            raise VllmServerError(f"vLLM is not installed ({cfg.python} not found): {INSTALL_HINT}")
        if not (cfg.model / "config.json").is_file():
            raise VllmServerError(f"no config.json in the model directory {cfg.model}")

    def ready(self) -> None:
        cfg = self.config
        self.limits = VllmLimits(
            read_cache_info(self.base_url), cfg.max_num_seqs, cfg.max_num_batched_tokens
        )
