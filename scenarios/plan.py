"""Compile a scenario into the one list of RequestSpecs that both executors run."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scenarios.messy import RequestKind
from scenarios.metrics import Summary, output_count_warning, unplanned_cache_warning
from scenarios.plan_budget import check_budget
from scenarios.prompts import RagSource, shared_key
from scenarios.spec import (
    Arrival,
    Constant,
    Distribution,
    LogNormal,
    Normal,
    Persona,
    Retry,
    Scenario,
    Uniform,
)
from scenarios.traces import TraceReplay, block_prefix
from scenarios.traffic import ClosedUsers


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


MIN_TURN_GAP_S = 0.1  # a closed user's plan assumes no cycle (think + answer) is shorter


@dataclass(frozen=True)
class _Openers:
    """Session starts in time order: when, for which persona, whether its user is a closed-loop
    one that keeps coming back, and what a replayed trace fixed for its first request
    (prompt and output tokens, -1 where it fixed none; prefix segments from its hash_ids)."""

    time: np.ndarray
    persona: np.ndarray
    closed: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    prefix: list[tuple[tuple[int, int], ...]]


def _arrivals(
    process: Arrival, rng: np.random.Generator, duration: float, rate_scale: float, base: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[tuple[int, int], ...]]]:
    """Times, trace prompt and output tokens (-1: none) and prefixes of one arrival process."""
    if not isinstance(process, TraceReplay):
        t = process.plan(rng, duration, rate_scale)
        none = np.full(len(t), -1)
        return t, none, none, [()] * len(t)
    tp = process.plan(rng, duration, rate_scale, base)
    n = len(tp.times)
    prompt = np.full(n, -1) if tp.prompt_tokens is None else np.maximum(tp.prompt_tokens, 1)
    output = np.full(n, -1) if tp.output_tokens is None else np.maximum(tp.output_tokens, 1)
    if tp.hash_ids is None:
        return tp.times, prompt, output, [()] * n
    prefix = [
        block_prefix(h, int(p), process.block_tokens)
        for h, p in zip(tp.hash_ids, prompt.tolist(), strict=True)
    ]
    return tp.times, prompt, output, prefix


def _openers(
    mix: list[Persona],
    scenario: Scenario,
    seeds: list[np.random.SeedSequence],
    duration: float,
    rate_scale: float,
) -> _Openers:
    """Session starts of every persona: its own arrival process (from seeds[2 + i]), or a
    weighted share of the scenario's (seeds[0]), split by independent draws (seeds[1])."""
    base = scenario.base_dir
    parts: list[tuple[np.ndarray, ...]] = []
    prefixes: list[tuple[tuple[int, int], ...]] = []
    sharers = [i for i, p in enumerate(mix) if p.arrival is None]
    if sharers:
        shared = scenario.traffic.process
        t, prompt, output, prefix = _arrivals(
            shared, np.random.default_rng(seeds[0]), duration, rate_scale, base
        )
        weights = np.array([mix[i].weight for i in sharers])
        pick = np.random.default_rng(seeds[1]).choice(
            len(sharers), len(t), p=weights / weights.sum()
        )
        parts.append((t, np.asarray(sharers)[pick], np.full(len(t), shared.closed), prompt, output))
        prefixes += prefix
    for i, p in enumerate(mix):
        if p.arrival is not None:
            rng = np.random.default_rng(seeds[2 + i])
            t, prompt, output, prefix = _arrivals(p.arrival, rng, duration, rate_scale, base)
            parts.append((t, np.full(len(t), i), np.full(len(t), p.arrival.closed), prompt, output))
            prefixes += prefix
    time, persona, closed, prompt, output = (np.concatenate(c) for c in zip(*parts, strict=True))
    order = np.lexsort((persona.astype(int), time))
    return _Openers(
        time[order],
        persona.astype(int)[order],
        closed.astype(bool)[order],
        prompt.astype(int)[order],
        output.astype(int)[order],
        [prefixes[i] for i in order.tolist()],
    )


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


def _no_lengths(n: int) -> np.ndarray:
    raise ValueError("no token lengths: give workload.prompt_tokens and output_tokens")


class _PersonaDraws:
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
        self.turns = _Draws(lambda n: sample_lengths(sess.turns, rng_session, n))
        self.uniform = _Draws(lambda n: rng_session.random(n))
        self.seed = _Draws(lambda n: rng_seed.integers(2**62, size=n))
        zero = lambda n: np.zeros(n)  # noqa: E731
        think, patience = sess.think_time, sess.patience
        self.think = _Draws(zero if think is None else lambda n: think.sample(rng_session, n))
        self.patience = _Draws(
            zero if patience is None else lambda n: patience.sample(rng_session, n)
        )
        # a closed-loop user's pause between its sessions (k6's sleep)
        self.user_think = _Draws(
            zero if closed is None else lambda n: closed.think_time.sample(rng_session, n)
        )
        self._closed = closed
        joint = work.lengths
        self._paired: int | None = None  # the output drawn with the last message (trace rows)
        if joint is not None:
            self._pairs = _Draws(lambda n: np.stack(joint.sample(rng_length, n, base_dir), axis=1))
        elif work.prompt_tokens is not None and work.output_tokens is not None:
            dist_in, dist_out = work.prompt_tokens, work.output_tokens
            self._messages = _Draws(lambda n: sample_lengths(dist_in, rng_length, n))
            self._outputs = _Draws(lambda n: sample_lengths(dist_out, rng_output, n))
        else:  # a replayed trace fixes every length (the scenario's validation saw to it)
            self._messages = self._outputs = _Draws(_no_lengths)
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
    root = np.random.SeedSequence(seed).spawn(2 + len(mix))
    # per persona: one stream for its own arrivals, one for everything else it draws
    arrival_seeds, draw_seeds = zip(*(s.spawn(2) for s in root[2:]), strict=True)
    openers = _openers(mix, scenario, [*root[:2], *arrival_seeds], duration, rate_scale)
    draws = [
        _PersonaDraws(
            draw_seeds[i], p, scenario.base_dir, _closed(p.arrival or scenario.traffic.process)
        )
        for i, p in enumerate(mix)
    ]
    if all(_single_requests(p) for p in mix) and not openers.closed.any():
        return _single_request_plan(openers, mix, draws)
    per_session = [_mean_turns(p) for p in mix]  # an open session's expected requests
    check_budget(
        sum(
            draws[k].closed_budget(duration) if closed else per_session[k]
            for k, closed in zip(openers.persona.tolist(), openers.closed.tolist(), strict=True)
        ),
        "sessions: planned turns",
    )
    rows: list[dict[str, Any]] = []  # RequestSpec fields but id and after
    follows: list[int] = []  # index of the row each row follows, -1 for none
    session = 0
    for j, (start, k, closed) in enumerate(
        zip(openers.time.tolist(), openers.persona.tolist(), openers.closed.tolist(), strict=True)
    ):
        persona, d = mix[k], draws[k]
        fixed_in, fixed_out = int(openers.prompt[j]), int(openers.output[j])
        sess = d.session
        budget = d.closed_budget(duration) if closed else 1
        previous: dict[str, Any] | None = None
        sent = 0
        while sent < budget:  # one session per pass; a closed user loops until its budget is spent
            patience = float(d.patience.next()) if sess.patience is not None else None
            # the first request of an opener may start with a trace's shared blocks
            blocks = openers.prefix[j] if previous is None else ()
            history: tuple[tuple[int, int], ...] = ()
            history_tokens = 0
            turns = int(d.turns.next())
            for turn in range(turns):
                first = previous is None
                message, kind = d.message_tokens(fixed_in if first else -1)
                redo = sess.regenerate > 0 and d.uniform.next() < sess.regenerate
                text_seed = int(d.seed.next())
                if turn == 0:  # a new conversation: its system prompt, then a trace's blocks
                    history = d.shared_head(text_seed, message) + blocks
                for regenerate in (False, True) if redo else (False,):
                    output = d.output_tokens(fixed_out if first and not regenerate else -1)
                    if previous is None:
                        think = 0.0
                    elif turn == 0 and not regenerate:  # a closed user's next session
                        think = float(d.user_think.next())
                    else:
                        think = float(d.think.next())
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
                        "text_seed": text_seed,
                    }
                    rows.append(previous)
                    sent += 1
                covered = sum(tokens for _, tokens in history)
                history_tokens += message + output
                segment = (_segment_key(seed, session, turn), history_tokens - covered)
                history = (*history, segment)
            session += 1
    return _numbered(rows, follows)


def token_warnings(
    summary: Summary, plan: Sequence[RequestSpec], common_prefix_tokens: float
) -> list[str]:
    """What the served tokens say against the plan: a prefix cache serving more than the plan
    shares (with `common_prefix_tokens` every conversation begins with), chunks that are not
    tokens."""
    mean_prompt = sum(s.prompt_tokens for s in plan) / max(len(plan), 1)
    planned_share = shareable_prompt_share(plan) + common_prefix_tokens / max(mean_prompt, 1)
    found = (
        unplanned_cache_warning(summary.tokens, planned_share),
        output_count_warning(summary.tokens),
    )
    return [w for w in found if w]


def shareable_prompt_share(plan: Iterable[RequestSpec]) -> float:
    """Share of the plan's prompt tokens that an ideal prefix cache could serve: the prefix
    segments whose chain (the segment and all before it) an earlier request already sent."""
    seen: set[tuple[tuple[int, int], ...]] = set()
    shareable = total = 0
    for spec in sorted(plan, key=lambda s: s.arrival):
        total += spec.prompt_tokens
        for i, (_, tokens) in enumerate(spec.prefix):
            chain = spec.prefix[: i + 1]
            if chain in seen:
                shareable += tokens
            else:
                seen.add(chain)
    return shareable / total if total else 0.0


def plan_digest(plan: Sequence[RequestSpec]) -> str:
    """Identifies a plan by its requests and their planned times (not their text)."""
    h = hashlib.sha256()
    for s in plan:
        h.update(f"{s.id}|{s.arrival:.9f}|{s.after}|{s.prompt_tokens}|{s.max_tokens}\n".encode())
    return h.hexdigest()[:16]


def plan_share(plan: Sequence[RequestSpec], index: int, count: int) -> list[RequestSpec]:
    """Worker `index`'s share of `count`: every count-th opening request in arrival order, from
    the index-th, with every request that follows from it (a session stays on one worker)."""
    ordered = sorted(plan, key=lambda s: s.arrival)
    root: dict[str, str] = {}
    opener = 0
    owner: dict[str, int] = {}
    for s in ordered:  # a follow-up's arrival is after the turn it follows
        if s.after is None:
            root[s.id] = s.id
            owner[s.id] = opener % count
            opener += 1
        else:
            root[s.id] = root[s.after]
    return [s for s in ordered if owner[root[s.id]] == index]


def _closed(process: Arrival) -> ClosedUsers | None:
    return process if isinstance(process, ClosedUsers) else None


def _mean_turns(persona: Persona) -> float:
    """About how many requests one session of `persona` sends (turns, and their regenerates):
    the turn distribution's mean, clipped to its bounds."""
    assert persona.session is not None
    t: Distribution = persona.session.turns
    if isinstance(t, Constant):
        mean = float(t.value)
    elif isinstance(t, Uniform):
        mean = (t.low + t.high) / 2
    elif isinstance(t, Normal):
        mean = t.mean
    else:
        mean = t.median * math.exp(t.sigma**2 / 2)
    mean = min(max(mean, t.min), t.max if t.max is not None else math.inf)
    return mean * (1 + persona.session.regenerate)


def _single_requests(persona: Persona) -> bool:
    """Every session is one request: no turns to chain, no regenerate."""
    assert persona.session is not None
    turns = persona.session.turns
    return isinstance(turns, Constant) and turns.value == 1 and persona.session.regenerate == 0


def _single_request_plan(
    openers: _Openers, mix: list[Persona], draws: list[_PersonaDraws]
) -> list[RequestSpec]:
    """The common case, drawn in bulk: each arrival is one request."""
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
            message[i], kinds[i] = d.message_tokens(int(openers.prompt[i]))
            output[i] = d.output_tokens(int(openers.output[i]))
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
            prefix=draws[k].shared_head(s, m) + openers.prefix[i],
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
