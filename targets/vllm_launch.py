"""Everything between "use vLLM" and a running one: venv check, model directory, process, limits."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, ClassVar

from targets.launcher import EngineLauncher, Say
from targets.vllm_model import ensure_model_dir
from targets.vllm_server import VllmConfig, VllmServer, vllm_python


@dataclass(frozen=True)
class VllmOptions:
    """What the command line says about the vLLM server surgecast starts."""

    max_num_seqs: int = 8
    max_num_batched_tokens: int = 2048
    kv_cache_gib: int = 1
    max_model_len: int = 4096
    prefix_caching: bool = True
    block_size: int | None = None
    stream_interval: int = 1
    model_size: str = "tiny"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_for(options: VllmOptions, alias: str) -> VllmConfig:
    """The server's config: the venv's python (VllmServerError if missing), the model directory."""
    python = vllm_python()
    model = ensure_model_dir(options.model_size)
    return VllmConfig(
        model,
        python=python,
        alias=alias,
        max_num_seqs=options.max_num_seqs,
        max_num_batched_tokens=options.max_num_batched_tokens,
        kv_cache_gib=options.kv_cache_gib,
        max_model_len=options.max_model_len,
        prefix_caching=options.prefix_caching,
        block_size=options.block_size,
        stream_interval=options.stream_interval,
    )


class VllmLauncher(EngineLauncher[VllmServer]):
    """vLLM for CPU (its own venv, `make vllm`) on loopback, with a random-weight model (so every
    request ignores EOS and answers its planned length)."""

    kind: ClassVar[str] = "vllm"

    def __init__(self, options: VllmOptions):
        self.options = options

    def check(self) -> None:
        vllm_python()  # a missing venv fails before anything is made

    def start(self, model: str, say: Say) -> None:
        server = VllmServer(config_for(self.options, model))
        say(f"starting vLLM ({self.options.model_size} model; about a minute on 2 cores)")
        self._serve(server, say)

    def facts(self) -> dict[str, Any]:
        server = self.server
        if server is None or server.limits is None:
            return {}
        return {
            "limits": server.limits.engine_limits(),
            "vllm": {
                **server.limits.to_dict(),
                "model": str(server.config.model),
                "kv_cache_gib": server.config.kv_cache_gib,
                "stream_interval": server.config.stream_interval,
                "startup_s": round(server.startup_s, 3),
            },
        }

    def _describe(self) -> str:
        server = self.server
        assert server is not None and server.limits is not None
        limits = server.limits
        cache = limits.cache
        return (
            f"vLLM up at {server.base_url} in {server.startup_s:.1f} s: max_num_seqs "
            f"{limits.max_num_seqs}, {cache.num_blocks} KV blocks x {cache.block_size} "
            f"tokens, prefix caching {'on' if cache.prefix_caching else 'off'}"
        )
