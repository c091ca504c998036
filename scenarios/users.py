"""What the plan's users do, without a clock: send at, wait until, retry after, follow up, abandon.

As the engine has one drive loop for both clocks (`simulator.engine.drive`), the users have one:
`Users.session(opener)` is a plain generator for one user's chain of requests. It yields a `Send`
(this attempt of this request, at this time, given up at that time) and is sent back how the
attempt `Ended`; it finishes when the user has nothing more to send. A driver interprets the
commands on its own clock: `loadgen.runner` with gevent for real sends, `simulator.replay.sim`
with SimPy. Retries with their seeded backoff, follow-up turns, failed sessions and the run's
horizon are defined here once, so the two cannot drift apart.
"""

from __future__ import annotations

import math
import random
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass

from scenarios.plan import RequestSpec

RETRIED_STATUSES = ("error", "rejected")  # records the server answered with an error status


@dataclass(frozen=True, slots=True)
class Send:
    """Send attempt `attempt` of `spec` at `at`. `intended` is when the user meant to send the
    request (its first attempt's time: latencies from it include the backoff); a user still
    without a first token at `give_up` abandons it (inf: a patient user)."""

    spec: RequestSpec
    intended: float
    attempt: int
    at: float
    give_up: float


@dataclass(frozen=True, slots=True)
class Ended:
    """How an attempt ended, as its record says: `status` (ok, error, rejected, timeout,
    cancelled), when the user saw it end, and for an error answer its HTTP status and the
    server's Retry-After."""

    status: str
    end: float
    http_status: int | None = None
    retry_after_s: float | None = None


Session = Generator[Send, Ended, None]  # one user's requests; see `Users.session`


def give_up_at(spec: RequestSpec, intended: float) -> float:
    """When the user abandons `spec` if no token came: its patience after it was meant to go."""
    return intended + spec.patience_s if spec.patience_s is not None else math.inf


class Users:
    """The users of one plan: who starts when (`openers`), and each one's chain of requests."""

    def __init__(self, plan: Iterable[RequestSpec]):
        plan = list(plan)
        self.openers = sorted((s for s in plan if s.after is None), key=lambda s: s.arrival)
        self.followers = followers_of(plan)
        self.skipped = 0  # planned turns never sent: an earlier turn of their session failed

    def session(self, opener: RequestSpec) -> Session:
        """One user's requests from `opener` on: each turn tried until it ends well or gives
        up (a failure the retry policy covers is tried again after its backoff, at least the
        server's Retry-After, unless the user would give up first), then the next turn its
        think time after (none after a failed turn, whose session ends; a closed-loop user goes
        on with its next session). One generator for the whole chain: the simulator makes one
        per user, so it stays cheap."""
        spec: RequestSpec | None = opener
        due = opener.arrival
        while spec is not None:
            give_up = give_up_at(spec, due)
            jitter: random.Random | None = None  # made at the first retry: few requests need one
            attempt, at = 0, due
            while True:
                ended = yield Send(spec, due, attempt, at, give_up)
                if ended.status == "ok" or not retried(spec, attempt, ended):
                    break
                jitter = jitter or random.Random(f"{spec.id}:{spec.text_seed}")  # either clock
                assert spec.retry is not None
                wait = spec.retry.wait_s(attempt + 1, jitter.random(), ended.retry_after_s)
                if ended.end + wait >= give_up:
                    break  # the user gives up instead
                attempt, at = attempt + 1, ended.end + wait
            spec, due = self._next(spec, ended)

    def _next(self, spec: RequestSpec, ended: Ended) -> tuple[RequestSpec | None, float]:
        """What the user sends after `spec` ended, and when (None: nothing more)."""
        if ended.status == "ok":
            followers = self.followers.get(spec.id)
            if followers is None:
                return None, math.nan  # the common case: a single request, answered
            nxt: RequestSpec | None = followers[0]
        else:
            nxt, dropped = next_session(spec, self.followers)
            self.skipped += dropped
        if nxt is None:
            return None, math.nan
        due = ended.end + nxt.think_s
        if nxt.not_after is not None and due > nxt.not_after:
            return None, math.nan  # the window closed: the rest of this user's plan is not sent
        return nxt, due


def retried(spec: RequestSpec, attempt: int, ended: Ended) -> bool:
    """Whether `spec`'s retry policy tries again after attempt `attempt` ended so: an error
    answer with a status it names, while retries are left."""
    retry = spec.retry
    return (
        retry is not None
        and attempt < retry.max_retries
        and ended.status in RETRIED_STATUSES
        and ended.http_status in retry.on_status
    )


def horizon(plan: Sequence[RequestSpec], timeout_s: float) -> float:
    """When every request must have ended: each turn's tries (each up to `timeout_s`) and
    longest backoffs, after the turn it follows and its think time, chained."""
    end: dict[str, float] = {}
    for spec in sorted(plan, key=lambda s: s.arrival):  # a turn comes after the one it follows
        after = end.get(spec.after) if spec.after is not None else None
        begin = spec.arrival if after is None else after + spec.think_s
        retries = spec.retry.max_retries if spec.retry else 0
        waits = spec.retry.longest_wait_s * retries if spec.retry else 0.0
        end[spec.id] = begin + (1 + retries) * timeout_s + waits
    return max(end.values(), default=0.0)


def followers_of(plan: Iterable[RequestSpec]) -> dict[str, list[RequestSpec]]:
    """Each request's follow-ups (the next turn, a regenerate, a closed user's next session)."""
    out: dict[str, list[RequestSpec]] = {}
    for spec in plan:
        if spec.after is not None:
            out.setdefault(spec.after, []).append(spec)
    return out


def next_session(
    spec: RequestSpec, followers: dict[str, list[RequestSpec]]
) -> tuple[RequestSpec | None, int]:
    """After `spec` failed or was abandoned: the rest of its session is dropped, and a closed
    user goes on with its next session. Returns that session's first request (None when the
    user has no other) and how many planned turns were dropped."""
    dropped = 0
    node: RequestSpec | None = spec
    while node is not None:
        nxt = followers.get(node.id)
        node = nxt[0] if nxt else None
        if node is not None and node.session != spec.session:
            return node, dropped
        dropped += node is not None
    return None, dropped
