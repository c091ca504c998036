"""Everything between "use llama-server" and a running one: binary, model, process, limits."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from targets.gguf_model import ensure_model
from targets.llama_build import ensure_server
from targets.llama_server import LlamaServer, LlamaServerConfig, LlamaServerError

Say = Callable[[str], None]
DEFAULT_BATCH_TOKENS = 2048  # llama-server's default --batch-size: prompt tokens one step takes


@dataclass(frozen=True)
class LlamaOptions:
    """What the command line says about the llama-server surgecast starts."""

    slots: int = 4
    ctx: int = 4096
    threads: int = 2
    model_size: str = "tiny"
    seed: int = 0
    build: bool = False  # build the binary when it is not cached (several minutes on 2 cores)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(options: LlamaOptions, say: Say) -> tuple[Path, Path]:
    """(binary, model): restored from the cache, else built (binary only with `build`)."""
    binary = ensure_server(build=options.build, say=say)
    try:
        model = ensure_model(options.model_size, options.seed)
    except ImportError:
        raise LlamaServerError(
            "writing the model needs the gguf package: pip install 'surgecast[llama]'"
        ) from None
    return binary, model


def launch(options: LlamaOptions, alias: str, say: Say) -> LlamaServer:
    """A started server (the caller closes it); BuildError or LlamaServerError if it cannot be."""
    binary, model = prepare(options, say)
    config = LlamaServerConfig(
        binary, model, slots=options.slots, ctx=options.ctx, threads=options.threads, alias=alias
    )
    server = LlamaServer(config)
    server.start()
    return server


def engine_limits(server: LlamaServer) -> dict[str, Any]:
    """The limits to record in run.json, in EngineConfig's terms, with where they came from."""
    if server.limits is None:
        raise LlamaServerError("llama-server limits were not read (server not started)")
    return limits_dict(server.limits.total_slots, server.limits.kv_cache_tokens)


def limits_dict(max_num_seqs: int, kv_cache_tokens: int) -> dict[str, Any]:
    return {
        "max_num_seqs": max_num_seqs,
        "kv_cache_tokens": kv_cache_tokens,
        "max_batched_tokens": max(DEFAULT_BATCH_TOKENS, max_num_seqs),
        "source": "llama-server /props",
    }
