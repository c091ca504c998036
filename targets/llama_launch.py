"""Everything between "use llama-server" and a running one: binary, model, process, limits."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from targets.gguf_model import ensure_model
from targets.launcher import EngineLauncher, Say
from targets.llama_build import ensure_server
from targets.llama_server import LlamaServer, LlamaServerConfig, LlamaServerError


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


class LlamaLauncher(EngineLauncher[LlamaServer]):
    """llama-server on loopback, with a random-weight model (so every request ignores EOS and
    answers its planned length)."""

    kind: ClassVar[str] = "llama-server"

    def __init__(self, options: LlamaOptions):
        self.options = options

    def start(self, model: str, say: Say) -> None:
        binary, weights = prepare(self.options, say)
        o = self.options
        config = LlamaServerConfig(
            binary, weights, slots=o.slots, ctx=o.ctx, threads=o.threads, alias=model
        )
        self._serve(LlamaServer(config), say)

    def facts(self) -> dict[str, Any]:
        server = self.server
        if server is None or server.limits is None:
            return {}
        return {
            "limits": server.limits.engine_limits(),
            "llama_server": {
                **server.limits.to_dict(),
                "binary": str(server.config.binary),
                "model": str(server.config.model),
                "ctx": server.config.ctx,
                "threads": server.config.threads,
                "startup_s": round(server.startup_s, 3),
            },
        }

    def _describe(self) -> str:
        server = self.server
        assert server is not None and server.limits is not None
        return (
            f"llama-server up at {server.base_url} in {server.startup_s:.2f} s: "
            f"{server.limits.total_slots} slots x {server.limits.n_ctx_slot} tokens of context"
        )
