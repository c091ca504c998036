"""Everything between "use vLLM" and a running one: venv check, model directory, process, limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from targets.vllm_model import ensure_model_dir
from targets.vllm_server import (
    CacheInfo,
    VllmConfig,
    VllmServer,
    VllmServerError,
    vllm_python,
)

Say = Callable[[str], None]


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


def launch(options: VllmOptions, alias: str, say: Say) -> VllmServer:
    """A started server (the caller closes it); VllmServerError if it cannot be."""
    server = VllmServer(config_for(options, alias))
    say(f"starting vLLM ({options.model_size} model; about a minute on 2 cores)")
    server.start()
    return server


def engine_limits(server: VllmServer) -> dict[str, Any]:
    """The limits to record in run.json, in EngineConfig's terms, with where they came from."""
    limits = server.limits
    if limits is None:
        raise VllmServerError("vLLM limits were not read (server not started)")
    return {
        "max_num_seqs": limits.max_num_seqs,
        "max_batched_tokens": limits.max_num_batched_tokens,
        **cache_limits(limits.cache),
        "source": "vLLM flags given by surgecast; /metrics vllm:cache_config_info",
    }


def cache_limits(cache: CacheInfo) -> dict[str, Any]:
    """The limits any vLLM reports about its cache (an external one: these only)."""
    return {
        "kv_cache_tokens": cache.kv_cache_tokens,
        "block_size": cache.block_size,
        "enable_prefix_caching": cache.prefix_caching,
        "source": "vLLM /metrics vllm:cache_config_info",
    }
