"""Every target of a run behind one small interface: start it, its base URL, what it reports of
itself (limits, engine), whether it is still alive, stop it.

A run takes a `Launcher` and never asks which kind it is: the reference server, llama-server and
vLLM are started on loopback by theirs (`targets.reference_launch`, `targets.llama_launch`,
`targets.vllm_launch`); an `ExternalTarget` is a URL someone else runs, whose limits are read if it
is a llama-server (/props) or a vLLM (/metrics).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, ClassVar, Generic, TypeVar

from targets.llama_server import ServerLimits, probe_limits
from targets.process import ServerProcess
from targets.vllm_server import CacheInfo, probe_cache_info

Say = Callable[[str], None]


class Launcher(ABC):
    """A run's target. `start` makes it serve (TargetError when it cannot), `stop` ends what
    `start` began; between them `base_url` is where it answers."""

    kind: ClassVar[str]  # run.json's target.kind
    base_url: str = ""

    def check(self) -> None:
        """Fail early (TargetError), before a run folder is made, when it cannot start at all."""
        return None

    @abstractmethod
    def start(self, model: str, say: Say) -> None:
        """Start the target serving `model`, or find out what an external one is; `say` where
        it answers and what it said of itself."""

    def stop(self) -> None:
        """Stop what `start` started; idempotent."""
        return None

    def alive(self) -> bool:
        return True

    def death(self, when: str = "died during the run") -> str | None:
        """Why the target is gone (`when` it went), if surgecast started it and it died."""
        return None

    def facts(self) -> dict[str, Any]:
        """What run.json's target section keeps of it: the limits it reported, its engine's own
        sections (known before `start` for some, after it for others)."""
        return {}

    def request_body(self) -> dict[str, Any]:
        """Fields every request to it needs (a random-weight model's `ignore_eos`)."""
        return {}

    @contextmanager
    def started(self, model: str, say: Say) -> Iterator[Launcher]:
        try:
            self.start(model, say)
            yield self
        finally:
            self.stop()


S = TypeVar("S", bound=ServerProcess)


class EngineLauncher(Launcher, Generic[S]):
    """A real engine's server process that surgecast starts on loopback: it stops, lives and
    dies with that process, and its random-weight model ignores EOS (every request answers its
    planned length)."""

    server: S | None = None

    def _serve(self, server: S, say: Say) -> None:
        """Start `server` and say where it answers and what it reported."""
        self.server = server
        server.start()
        self.base_url = server.base_url
        say(self._describe())

    @abstractmethod
    def _describe(self) -> str: ...

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def alive(self) -> bool:
        return self.server is not None and self.server.alive()

    def death(self, when: str = "died during the run") -> str | None:
        if self.server is None or self.server.alive():
            return None
        return self.server.death_message(when)

    def request_body(self) -> dict[str, Any]:
        return {"ignore_eos": True}


class ExternalTarget(Launcher):
    """An OpenAI-compatible URL that someone else runs: nothing to start or stop."""

    kind: ClassVar[str] = "external"

    def __init__(self, base_url: str):
        self.base_url = base_url
        self._llama: ServerLimits | None = None
        self._vllm: CacheInfo | None = None

    def start(self, model: str, say: Say) -> None:
        """Read its limits where it declares them: a llama-server at /props, a vLLM its KV
        cache at /metrics; any other server is left alone."""
        self._llama = probe_limits(self.base_url)
        if self._llama is None:
            self._vllm = probe_cache_info(self.base_url)
        if self._llama is not None or self._vllm is not None:
            say(self._describe())

    def facts(self) -> dict[str, Any]:
        if self._llama is not None:
            return {"limits": self._llama.engine_limits(), "llama_server": self._llama.to_dict()}
        if self._vllm is not None:
            return {"limits": self._vllm.engine_limits(), "vllm": asdict(self._vllm)}
        return {}

    def _describe(self) -> str:
        if self._llama is not None:
            return (
                f"target is llama-server: {self._llama.total_slots} slots x "
                f"{self._llama.n_ctx_slot} tokens of context (read from /props)"
            )
        if self._vllm is not None:
            cache = self._vllm
            return (
                f"target is vLLM: {cache.num_blocks} KV blocks x {cache.block_size} tokens, "
                f"prefix caching {'on' if cache.prefix_caching else 'off'} (read from /metrics; "
                "give --max-num-seqs to calibrate with its batch limit)"
            )
        return ""
