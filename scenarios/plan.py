"""Compile a scenario into the one list of RequestSpecs that both executors run.

Session starts come from `scenarios.plan_openers`, each persona's draws from
`scenarios.plan_draws`.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from scenarios.messy import RequestKind
from scenarios.plan_budget import check_budget
from scenarios.plan_draws import PersonaDraws
from scenarios.plan_openers import Openers, draw_openers
from scenarios.spec import (
    Arrival,
    Constant,
    Distribution,
    Normal,
    Persona,
    Retry,
    Scenario,
    Uniform,
)
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


class Served(Protocol):
    """How a server serves planned lengths (`simulator.fit.tokenmap.TokenMap`)."""

    def lengths(
        self, prompt: np.ndarray, output: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def prefix(self, segments: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]: ...

    def apply(self, plan: Sequence[RequestSpec], seed: int = 0) -> list[RequestSpec]: ...


def build_plan(
    scenario: Scenario,
    *,
    seed: int | None = None,
    rate_scale: float = 1.0,
    duration_s: float | None = None,
    served: Served | None = None,
) -> list[RequestSpec]:
    """The scenario's requests in (estimated) arrival order; deterministic for a given seed.

    Every arrival starts a session of one persona. Its turns follow one another: a follow-up
    names the turn it follows (`after`) and the think time, and its prompt carries the
    history (earlier messages and answers, planned at their drawn lengths) as a shared prefix.
    A closed user starts a new session when one ends, until the window closes (`not_after`).
    Independent random streams feed arrivals and each persona's sessions, lengths and text,
    so scaling the rate does not reshuffle a persona's length sequence.

    `served`: the plan as that server would serve it (`served.apply(plan, seed)`; where each
    arrival is one request, its lengths mapped before its requests are made, the same plan
    made once).
    """
    seed = scenario.traffic.seed if seed is None else seed
    duration = scenario.traffic.duration_s if duration_s is None else duration_s
    mix = scenario.mix()
    openers, draws = _openers_and_draws(scenario, mix, seed, duration, rate_scale)
    if all(_single_requests(p) for p in mix) and not openers.closed.any():
        return _single_request_plan(openers, mix, draws, None if served is None else (served, seed))
    _check_turn_budget(openers, mix, draws, duration)
    sessions = _Sessions(seed, duration)
    for j, (start, k, closed) in enumerate(
        zip(openers.time.tolist(), openers.persona.tolist(), openers.closed.tolist(), strict=True)
    ):
        fixed = int(openers.prompt[j]), int(openers.output[j])
        sessions.opener(start, mix[k], draws[k], closed, fixed, openers.prefix[j])
    plan = _numbered(sessions.rows, sessions.follows)
    return plan if served is None else served.apply(plan, seed)


def _openers_and_draws(
    scenario: Scenario, mix: list[Persona], seed: int, duration: float, rate_scale: float
) -> tuple[Openers, list[PersonaDraws]]:
    """The session starts and each persona's draws, from independent streams of `seed`."""
    root = np.random.SeedSequence(seed).spawn(2 + len(mix))
    # per persona: one stream for its own arrivals, one for everything else it draws
    arrival_seeds, draw_seeds = zip(*(s.spawn(2) for s in root[2:]), strict=True)
    openers = draw_openers(mix, scenario, [*root[:2], *arrival_seeds], duration, rate_scale)
    draws = [
        PersonaDraws(
            draw_seeds[i], p, scenario.base_dir, _closed(p.arrival or scenario.traffic.process)
        )
        for i, p in enumerate(mix)
    ]
    return openers, draws


def _check_turn_budget(
    openers: Openers, mix: list[Persona], draws: list[PersonaDraws], duration: float
) -> None:
    """PlanTooLarge when the sessions are expected to send more than the plan may hold."""
    per_session = [_mean_turns(p) for p in mix]  # an open session's expected requests
    check_budget(
        sum(
            draws[k].closed_budget(duration) if closed else per_session[k]
            for k, closed in zip(openers.persona.tolist(), openers.closed.tolist(), strict=True)
        ),
        "sessions: planned turns",
    )


class _Sessions:
    """Every session's requests as rows (RequestSpec fields but id and after), in the order
    they are planned, each with the row it follows."""

    def __init__(self, seed: int, duration: float):
        self.seed = seed
        self.duration = duration
        self.rows: list[dict[str, Any]] = []
        self.follows: list[int] = []  # index of the row each row follows, -1 for none
        self.session = 0
        self._previous: dict[str, Any] | None = None  # the opener's last row so far

    def opener(
        self,
        start: float,
        persona: Persona,
        d: PersonaDraws,
        closed: bool,
        fixed: tuple[int, int],
        blocks: tuple[tuple[int, int], ...],
    ) -> None:
        """What one opener sends: a session, or a closed user's sessions until its budget is
        spent. `fixed`: the (prompt, output) tokens a trace fixed for its first request (-1:
        none); `blocks`: a trace's shared prefix blocks its first request starts with."""
        budget = d.closed_budget(self.duration) if closed else 1
        self._previous = None
        sent = 0
        while sent < budget:
            sent += self._session(start, persona, d, closed, fixed, blocks)
            self.session += 1

    def _session(
        self,
        start: float,
        persona: Persona,
        d: PersonaDraws,
        closed: bool,
        fixed: tuple[int, int],
        blocks: tuple[tuple[int, int], ...],
    ) -> int:
        """One session's turns, each with its regenerate where one is drawn; the requests
        planned. Its prompts carry the history so far as prefix segments."""
        sess = d.session
        patience = float(d.patience.next()) if sess.patience is not None else None
        blocks = blocks if self._previous is None else ()  # the opener's first request only
        history: tuple[tuple[int, int], ...] = ()
        history_tokens = sent = 0
        for turn in range(int(d.turns.next())):
            first = self._previous is None
            message, kind = d.message_tokens(fixed[0] if first else -1)
            redo = sess.regenerate > 0 and d.uniform.next() < sess.regenerate
            text_seed = int(d.seed.next())
            if turn == 0:  # a new conversation: its system prompt, then a trace's blocks
                history = d.shared_head(text_seed, message) + blocks
            for regenerate in (False, True) if redo else (False,):
                output = d.output_tokens(fixed[1] if first and not regenerate else -1)
                self._add(
                    start,
                    self._think(d, turn, regenerate),
                    prompt_tokens=history_tokens + message,
                    max_tokens=output,
                    text_kind=kind,
                    persona=persona.name,
                    turn=turn,
                    prefix=history,
                    not_after=self.duration if closed else None,
                    regenerate=regenerate,
                    patience_s=patience,
                    retry=sess.retry if sess.retry.max_retries > 0 else None,
                    message_tokens=message,
                    text_seed=text_seed,
                )
                sent += 1
            covered = sum(tokens for _, tokens in history)
            history_tokens += message + output
            segment = (_segment_key(self.seed, self.session, turn), history_tokens - covered)
            history = (*history, segment)
        return sent

    def _think(self, d: PersonaDraws, turn: int, regenerate: bool) -> float:
        """Seconds after the previous answer: none before an opener's first request, a closed
        user's pause before its next session, else the session's think time."""
        if self._previous is None:
            return 0.0
        if turn == 0 and not regenerate:  # a closed user's next session
            return float(d.user_think.next())
        return float(d.think.next())

    def _add(self, start: float, think: float, **fields: Any) -> None:
        """A row sent `think` seconds after the previous one (at `start` for the first)."""
        previous = self._previous
        self.follows.append(-1 if previous is None else previous["index"])
        self._previous = {
            "index": len(self.rows),
            "arrival": start if previous is None else previous["arrival"] + think,
            "session": self.session,
            "think_s": think,
            **fields,
        }
        self.rows.append(self._previous)


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
    openers: Openers,
    mix: list[Persona],
    draws: list[PersonaDraws],
    served: tuple[Served, int] | None,
) -> list[RequestSpec]:
    """The common case, drawn in bulk: each arrival is one request (as `served` with its seed
    would serve it)."""
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
    prompt, answer, segments = message, output, (lambda head: head)
    if served is not None:
        (prompt, answer), segments = served[0].lengths(message, output, served[1]), served[0].prefix
    return [
        RequestSpec(
            id=f"r{i:06d}",
            arrival=t,
            prompt_tokens=p,
            max_tokens=o,
            text_kind=kinds[i],
            persona=names[k],
            session=i,
            patience_s=patience[i],
            retry=retries[k],
            message_tokens=m,
            text_seed=s,
            prefix=segments(draws[k].shared_head(s, m) + openers.prefix[i]),
        )
        for i, (t, k, m, p, o, s) in enumerate(
            zip(
                openers.time.tolist(),
                openers.persona.tolist(),
                message.tolist(),
                prompt.tolist(),
                answer.tolist(),
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


def uncached(plan: Sequence[RequestSpec], tag: str) -> list[RequestSpec]:
    """The plan with no prompt a target may have cached (for measuring an engine's prefill):
    no shared prefix segments, each rendered prompt from a text seed of its own, a fixed
    prompt (a corpus') begun with `tag` (one per plan: a plan's seed) and its request's id."""
    out = []
    for spec in plan:
        prompt = None if spec.prompt is None else f"[{tag}-{spec.id}] {spec.prompt}"
        seed = zlib.crc32(f"{tag}/{spec.id}".encode())
        out.append(dataclasses.replace(spec, prefix=(), text_seed=seed, prompt=prompt))
    return out
