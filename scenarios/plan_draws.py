"""What a plan draws per persona: token lengths from a scenario's distributions, and each
persona's independent random streams (turns, think times, patience, lengths, text seeds)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.distributions import MAX_VALUE
from scenarios.messy import RequestKind
from scenarios.prompts import RagSource, shared_key
from scenarios.spec import Constant, Distribution, LogNormal, Normal, Persona, Uniform
from scenarios.traffic import ClosedUsers


def sample_lengths(dist: Distribution, rng: np.random.Generator, n: int) -> np.ndarray:
    """Integer token lengths drawn from `dist`, clipped to its [min, max] (max at most
    MAX_VALUE: a lognormal's tail can reach any number)."""
    if isinstance(dist, Constant):
        x = np.full(n, float(dist.value))
    elif isinstance(dist, Uniform):
        x = rng.integers(dist.low, dist.high + 1, size=n).astype(float)
    elif isinstance(dist, Normal):
        x = rng.normal(dist.mean, dist.std, size=n)
    elif isinstance(dist, LogNormal):
        x = dist.median * np.exp(rng.normal(0.0, dist.sigma, size=n))
    else:  # pragma: no cover - the schema admits no other kind
        raise TypeError(f"unknown distribution {dist!r}")
    hi = dist.max if dist.max is not None else MAX_VALUE
    return np.clip(np.rint(x), max(dist.min, 1), hi).astype(int)


MIN_TURN_GAP_S = 0.1  # a closed user's plan assumes no cycle (think + answer) is shorter


class Draws:
    """One stream of values drawn in blocks (fast), handed out one at a time in order."""

    BLOCK = 4096

    def __init__(self, draw: Callable[[int], np.ndarray]):
        self._draw = draw
        self._values: list[Any] = []

    def next(self) -> Any:
        if not self._values:
            self._values = self._draw(self.BLOCK).tolist()[::-1]
        return self._values.pop()

    def take(self, n: int) -> list[Any]:
        """The next `n` values, as `n` calls of next() would give them."""
        while len(self._values) < n:
            self._values = self._draw(self.BLOCK).tolist()[::-1] + self._values
        taken = self._values[-n:][::-1] if n else []
        del self._values[len(self._values) - n :]
        return taken


def _no_lengths(n: int) -> np.ndarray:
    raise ValueError("no token lengths: give workload.prompt_tokens and output_tokens")


class PersonaDraws:
    """A persona's independent random streams, drawn in the order its turns are planned."""

    def __init__(
        self,
        seed: np.random.SeedSequence,
        persona: Persona,
        base_dir: Path | None,
        closed: ClosedUsers | None,
    ):
        assert persona.session is not None and persona.workload is not None  # mix() fills them
        sess, work = persona.session, persona.workload
        rng_session, rng_length, rng_output, self.rng_kind, rng_seed = (
            np.random.default_rng(s) for s in seed.spawn(5)
        )
        self.session = sess
        self.messiness = work.messiness
        self._rag = work.text if isinstance(work.text, RagSource) else None
        self.turns = Draws(lambda n: sample_lengths(sess.turns, rng_session, n))
        self.uniform = Draws(lambda n: rng_session.random(n))
        self.seed = Draws(lambda n: rng_seed.integers(2**62, size=n))
        zero = lambda n: np.zeros(n)  # noqa: E731
        think, patience = sess.think_time, sess.patience
        self.think = Draws(zero if think is None else lambda n: think.sample(rng_session, n))
        self.patience = Draws(
            zero if patience is None else lambda n: patience.sample(rng_session, n)
        )
        # a closed-loop user's pause between its sessions (k6's sleep)
        self.user_think = Draws(
            zero if closed is None else lambda n: closed.think_time.sample(rng_session, n)
        )
        self._closed = closed
        joint = work.lengths
        self._paired: int | None = None  # the output drawn with the last message (trace rows)
        if joint is not None:
            self._pairs = Draws(lambda n: np.stack(joint.sample(rng_length, n, base_dir), axis=1))
        elif work.prompt_tokens is not None and work.output_tokens is not None:
            dist_in, dist_out = work.prompt_tokens, work.output_tokens
            self._messages = Draws(lambda n: sample_lengths(dist_in, rng_length, n))
            self._outputs = Draws(lambda n: sample_lengths(dist_out, rng_output, n))
        else:  # a replayed trace fixes every length (the scenario's validation saw to it)
            self._messages = self._outputs = Draws(_no_lengths)
        self.joint = joint is not None

    def shared_head(self, text_seed: int, tokens: int) -> tuple[tuple[int, int], ...]:
        """The prefix segment a new conversation starts with: its RAG system prompt, if any."""
        if self._rag is None:
            return ()
        index = self._rag.system_index(text_seed)
        return ((shared_key("rag", index), self._rag.system_tokens(tokens)),)

    def closed_budget(self, duration: float) -> int:
        """Turns to plan for one closed-loop user: enough for its cycles (think time plus an
        answer of at least MIN_TURN_GAP_S) to fill the window, six standard deviations over."""
        assert self._closed is not None
        expected = duration / max(self._closed.think_time.mean, MIN_TURN_GAP_S)
        return math.ceil(expected + 6 * math.sqrt(expected) + 10)

    def message_tokens(self, fixed: int = -1) -> tuple[int, RequestKind]:
        """The next new message's tokens (`fixed` by a trace when >= 0) and its kind: a long
        paste multiplies the length, an empty prompt has (about) none."""
        if self.joint:
            tokens, self._paired = self._pairs.next()
        else:
            tokens = fixed if fixed >= 0 else self._messages.next()
        tokens = fixed if fixed >= 0 else int(tokens)
        kind = self.messiness.request_kind(self.rng_kind)
        if fixed >= 0:
            kind = "normal"  # a trace's row is what it is: no paste or empty prompt instead
        if kind == "long_paste":
            tokens = round(tokens * self.messiness.paste_factor)
        elif kind == "empty":
            tokens = 1
        return tokens, kind

    def output_tokens(self, fixed: int = -1) -> int:
        """The next answer's tokens: `fixed` by a trace, else the one drawn with the message
        (trace rows), else from the output distribution."""
        if self.joint:
            paired, self._paired = self._paired, None
            drawn = paired if paired is not None else self._pairs.next()[1]
        else:
            drawn = fixed if fixed >= 0 else self._outputs.next()
        return fixed if fixed >= 0 else int(drawn)
