"""Compile a scenario into the one list of RequestSpecs that both executors run."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from scenarios.messy import RequestKind
from scenarios.spec import (
    Constant,
    Distribution,
    LogNormal,
    Normal,
    Persona,
    Retry,
    Scenario,
    Uniform,
)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    id: str
    arrival: float  # seconds from run start: the intended send time
    prompt_tokens: int
    max_tokens: int
    prompt: str | None = None  # fixed text; None: rendered at send time from text_seed
    persona: str = "default"
    session: int = 0
    turn: int = 0
    # (hash, tokens) segments the prompt begins with, in order: two requests whose chains start
    # alike share those prompt tokens byte for byte (trace hash_ids, shared system prompts,
    # a session's history). Engines with prefix caching may skip their prefill.
    prefix: tuple[tuple[int, int], ...] = ()
    # Sessions: a follow-up is sent `think_s` after the request `after` ended (its `arrival` is
    # then only the plan's estimate); one due later than `not_after` is not sent.
    after: str | None = None
    think_s: float = 0.0
    not_after: float | None = None
    regenerate: bool = False  # resend the previous turn's messages for a new answer
    patience_s: float | None = None  # the user cancels when no token came within it
    retry: Retry | None = None  # how the client retries a 429 or 5xx
    message_tokens: int = 0  # the new user message's tokens (0: the whole prompt)
    text_kind: RequestKind = "normal"  # or a very long paste, or an empty prompt
    text_seed: int = 0  # seeds the prompt text when it is rendered at send time


def sample_lengths(dist: Distribution, rng: np.random.Generator, n: int) -> np.ndarray:
    """Integer token lengths drawn from `dist`, clipped to its [min, max]."""
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
    hi = dist.max if dist.max is not None else np.inf
    return np.clip(np.rint(x), max(dist.min, 1), hi).astype(int)


def poisson_arrivals(rng: np.random.Generator, rate: float, duration_s: float) -> np.ndarray:
    """Arrival times of a Poisson process of `rate` per second on [0, duration_s)."""
    expected = rate * duration_s
    n_draw = int(expected + 6 * np.sqrt(expected) + 16)
    times = np.cumsum(rng.exponential(1.0 / rate, size=n_draw))
    while times[-1] < duration_s:  # practically never: 6 sigma of headroom
        more = times[-1] + np.cumsum(rng.exponential(1.0 / rate, size=n_draw))
        times = np.concatenate([times, more])
    return times[times < duration_s]


MIN_TURN_GAP_S = 0.25  # a closed user's plan holds at most duration / max(think, this) turns


@dataclass(frozen=True)
class _Openers:
    """Session starts in time order: when, for which persona, and whether its user is a
    closed-loop one that keeps coming back."""

    time: np.ndarray
    persona: np.ndarray
    closed: np.ndarray


def _openers(
    mix: list[Persona],
    scenario: Scenario,
    seeds: list[np.random.SeedSequence],
    duration: float,
    rate_scale: float,
) -> _Openers:
    """Session starts of every persona: its own arrival process (from its seeds[-1]), or a
    weighted share of the scenario's (seeds[0]), split by independent draws (seeds[1])."""
    times, who, closed = [], [], []
    sharers = [i for i, p in enumerate(mix) if p.arrival is None]
    if sharers:
        shared = scenario.traffic.process
        t = shared.plan(np.random.default_rng(seeds[0]), duration, rate_scale)
        weights = np.array([mix[i].weight for i in sharers])
        pick = np.random.default_rng(seeds[1]).choice(
            len(sharers), len(t), p=weights / weights.sum()
        )
        times.append(t)
        who.append(np.asarray(sharers)[pick])
        closed.append(np.full(len(t), shared.closed))
    for i, p in enumerate(mix):
        if p.arrival is not None:
            rng = np.random.default_rng(seeds[2 + i].spawn(6)[-1])
            t = p.arrival.plan(rng, duration, rate_scale)
            times.append(t)
            who.append(np.full(len(t), i))
            closed.append(np.full(len(t), p.arrival.closed))
    time = np.concatenate(times)
    persona = np.concatenate(who).astype(int)
    order = np.lexsort((persona, time))
    return _Openers(time[order], persona[order], np.concatenate(closed).astype(bool)[order])


class _Draws:
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


class _PersonaDraws:
    """A persona's independent random streams, drawn in the order its turns are planned."""

    def __init__(self, seed: np.random.SeedSequence, persona: Persona):
        assert persona.session is not None and persona.workload is not None  # mix() fills them
        sess, work = persona.session, persona.workload
        rng_session, rng_prompt, rng_output, self.rng_kind, rng_seed = (
            np.random.default_rng(s) for s in seed.spawn(6)[:5]
        )
        self.session = sess
        self.messiness = work.messiness
        self.turns = _Draws(lambda n: sample_lengths(sess.turns, rng_session, n))
        self.uniform = _Draws(lambda n: rng_session.random(n))
        self.message = _Draws(lambda n: sample_lengths(work.prompt_tokens, rng_prompt, n))
        self.output = _Draws(lambda n: sample_lengths(work.output_tokens, rng_output, n))
        self.seed = _Draws(lambda n: rng_seed.integers(2**62, size=n))
        zero = lambda n: np.zeros(n)  # noqa: E731
        self.think = _Draws(
            zero if sess.think_time is None else lambda n: sess.think_time.sample(rng_session, n)  # type: ignore[union-attr]
        )
        self.patience = _Draws(
            zero if sess.patience is None else lambda n: sess.patience.sample(rng_session, n)  # type: ignore[union-attr]
        )

    def message_tokens(self) -> tuple[int, RequestKind]:
        """The next new message's tokens and kind: a long paste multiplies the drawn length,
        an empty prompt has (about) none."""
        tokens = int(self.message.next())
        kind = self.messiness.request_kind(self.rng_kind)
        if kind == "long_paste":
            tokens = round(tokens * self.messiness.paste_factor)
        elif kind == "empty":
            tokens = 1
        return tokens, kind


def build_plan(
    scenario: Scenario,
    *,
    seed: int | None = None,
    rate_scale: float = 1.0,
    duration_s: float | None = None,
) -> list[RequestSpec]:
    """The scenario's requests in (estimated) arrival order; deterministic for a given seed.

    Every arrival starts a session of one persona. Its turns follow one another: a follow-up
    names the turn it follows (`after`) and the think time, and its prompt carries the
    history (earlier messages and answers, planned at their drawn lengths) as a shared prefix.
    A closed user starts a new session when one ends, until the window closes (`not_after`).
    Independent random streams feed arrivals and each persona's sessions, lengths and text,
    so scaling the rate does not reshuffle a persona's length sequence.
    """
    seed = scenario.traffic.seed if seed is None else seed
    duration = scenario.traffic.duration_s if duration_s is None else duration_s
    mix = scenario.mix()
    seeds = np.random.SeedSequence(seed).spawn(2 + len(mix))
    openers = _openers(mix, scenario, seeds, duration, rate_scale)
    draws = [_PersonaDraws(seeds[2 + i], p) for i, p in enumerate(mix)]
    if all(_single_requests(p) for p in mix) and not openers.closed.any():
        return _single_request_plan(openers, mix, draws)
    rows: list[dict[str, Any]] = []  # RequestSpec fields but id and after
    follows: list[int] = []  # index of the row each row follows, -1 for none
    session = 0
    for start, k, closed in zip(
        openers.time.tolist(), openers.persona.tolist(), openers.closed.tolist(), strict=True
    ):
        persona, d = mix[k], draws[k]
        sess = d.session
        think_mean = 0.0 if sess.think_time is None else sess.think_time.mean
        budget = math.ceil(duration / max(think_mean, MIN_TURN_GAP_S)) + 1 if closed else 1
        previous: dict[str, Any] | None = None
        sent = 0
        while sent < budget:  # one session per pass; a closed user loops until its budget is spent
            patience = float(d.patience.next()) if sess.patience is not None else None
            history: tuple[tuple[int, int], ...] = ()
            history_tokens = 0
            turns = int(d.turns.next())
            for turn in range(turns):
                message, kind = d.message_tokens()
                redo = sess.regenerate > 0 and d.uniform.next() < sess.regenerate
                for regenerate in (False, True) if redo else (False,):
                    output = int(d.output.next())
                    think = float(d.think.next()) if previous is not None else 0.0
                    follows.append(-1 if previous is None else previous["index"])
                    previous = {
                        "index": len(rows),
                        "arrival": start if previous is None else previous["arrival"] + think,
                        "prompt_tokens": history_tokens + message,
                        "max_tokens": output,
                        "text_kind": kind,
                        "persona": persona.name,
                        "session": session,
                        "turn": turn,
                        "prefix": history,
                        "think_s": think,
                        "not_after": duration if closed else None,
                        "regenerate": regenerate,
                        "patience_s": patience,
                        "retry": sess.retry if sess.retry.max_retries > 0 else None,
                        "message_tokens": message,
                        "text_seed": int(d.seed.next()),
                    }
                    rows.append(previous)
                    sent += 1
                history = (*history, (_segment_key(seed, session, turn), message + output))
                history_tokens += message + output
            session += 1
    return _numbered(rows, follows)


def _single_requests(persona: Persona) -> bool:
    """Every session is one request: no turns to chain, no regenerate."""
    assert persona.session is not None
    turns = persona.session.turns
    return isinstance(turns, Constant) and turns.value == 1 and persona.session.regenerate == 0


def _single_request_plan(
    openers: _Openers, mix: list[Persona], draws: list[_PersonaDraws]
) -> list[RequestSpec]:
    """The common case, drawn in bulk: each arrival is one request (the same draws, in the
    same order, as the general path)."""
    n = len(openers.time)
    message = np.zeros(n, dtype=int)
    output = np.zeros(n, dtype=int)
    seed = np.zeros(n, dtype=np.int64)
    patience: list[float | None] = [None] * n
    kinds: list[RequestKind] = ["normal"] * n
    for k, d in enumerate(draws):
        where = np.flatnonzero(openers.persona == k).tolist()
        if d.session.patience is not None:
            for i, value in zip(where, d.patience.take(len(where)), strict=True):
                patience[i] = value
        d.turns.take(len(where))
        for i in where:
            message[i], kinds[i] = d.message_tokens()
        output[where] = d.output.take(len(where))
        seed[where] = d.seed.take(len(where))
    names = [p.name for p in mix]
    retries = [d.session.retry if d.session.retry.max_retries > 0 else None for d in draws]
    return [
        RequestSpec(
            id=f"r{i:06d}",
            arrival=t,
            prompt_tokens=m,
            max_tokens=o,
            text_kind=kinds[i],
            persona=names[k],
            session=i,
            patience_s=patience[i],
            retry=retries[k],
            message_tokens=m,
            text_seed=s,
        )
        for i, (t, k, m, o, s) in enumerate(
            zip(
                openers.time.tolist(),
                openers.persona.tolist(),
                message.tolist(),
                output.tolist(),
                seed.tolist(),
                strict=True,
            )
        )
    ]


def _segment_key(seed: int, session: int, turn: int) -> int:
    """A stable key for one turn's message and answer as part of later prompts' prefixes."""
    return hash((seed, session, turn)) & 0x7FFFFFFFFFFFFFFF


def _numbered(rows: list[dict[str, Any]], follows: list[int]) -> list[RequestSpec]:
    """RequestSpecs with ids r000000... in (estimated) arrival order, `after` by those ids."""
    order = sorted(
        range(len(rows)),
        key=lambda i: (
            rows[i]["arrival"],
            rows[i]["session"],
            rows[i]["turn"],
            rows[i]["regenerate"],
        ),
    )
    name = [""] * len(rows)
    for rank, i in enumerate(order):
        name[i] = f"r{rank:06d}"
    out = []
    for i in order:
        row = rows[i]
        del row["index"]
        out.append(
            RequestSpec(id=name[i], after=name[follows[i]] if follows[i] >= 0 else None, **row)
        )
    return out
