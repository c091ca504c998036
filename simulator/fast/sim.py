"""The fast core: `simulate` for the fleets the compiled kernel covers (`unsupported` says
why not the others), with the reference's records and result.

The reference (`simulator.replay.sim` over SimPy) stays the model's definition; the kernel
(`simulator.fast.kernel`) runs the same rules in the same order, so the two give the same
records (tests/test_fast_core.py checks it request by request over random fleets).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from scenarios.plan import RequestSpec
from scenarios.spec import FleetSpec, TargetFaults
from scenarios.users import followers_of, horizon, next_session
from simulator.engine.core import EngineConfig
from simulator.engine.drive import Usage
from simulator.engine.stepcost import DecodeTableCost, RooflineCost, StepCost
from simulator.fast import kernel, layout, prefix, rows, scaling
from simulator.replay.ledger import Ledger
from simulator.replay.sim import SimResult, result_of

ROUTINGS = {
    "least_outstanding": layout.LEAST_OUTSTANDING,
    "round_robin": layout.ROUND_ROBIN,
    "random": layout.RANDOM,
    "least_kv": layout.LEAST_KV,
    "prefix_affinity": layout.PREFIX_AFFINITY,
}
# the kernel's 64-bit integers hold sums of tokens, and it keeps tables per batch slot and per
# block position: beyond these (no real engine's) the reference, with Python's integers, runs
TOKENS_LIMIT = 1 << 31
SLOTS_LIMIT = 1 << 16
BLOCK_LIMIT = 1 << 12


def unsupported(
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    fleet: FleetSpec | None = None,
    faults: TargetFaults | None = None,
) -> str | None:
    """Why the fast core cannot run this simulation (None: it can). It covers the whole model
    (every routing, a central queue, an admission limit, an autoscaler with its cold starts,
    prefix caching, the reference target's injected 429s and 500s, users who retry and give
    up); the reference runs sizes past the kernel's integers."""
    fleet = fleet or FleetSpec()
    if max(config.kv_cache_tokens, config.max_batched_tokens) > TOKENS_LIMIT:
        return f"a KV cache or token budget over {TOKENS_LIMIT:,} tokens"
    if config.max_num_seqs > SLOTS_LIMIT or config.block_size > BLOCK_LIMIT:
        return f"over {SLOTS_LIMIT:,} batch slots or blocks of over {BLOCK_LIMIT:,} tokens"
    if any(s.prompt_tokens + s.max_tokens > TOKENS_LIMIT for s in plan):
        return f"a request of over {TOKENS_LIMIT:,} tokens"
    if fleet.routing not in ROUTINGS:
        return f"{fleet.routing} routing"
    return None


def simulate_fast(
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    *,
    replicas: int = 1,
    timeout_s: float = 60.0,
    record_chunks: bool = True,
    fleet: FleetSpec | None = None,
    gpus_per_replica: int = 1,
    faults: TargetFaults | None = None,
    jumps: bool = True,
) -> SimResult:
    """`simulator.replay.sim.simulate` on the fast core (for what `unsupported` allows)."""
    fleet = fleet or FleetSpec()
    scaler = fleet.autoscaler
    low, high = (1, replicas) if scaler is None else (scaler.min_replicas, scaler.max_replicas)
    if not low <= replicas <= high:
        raise ValueError(f"replicas must be in [{low}, {high}], got {replicas}")
    cold = rows.cold_starts(fleet, config, gpus_per_replica)  # checks the cold start first
    ledger = Ledger(plan, record_chunks)  # checks the plan's ids first
    n_rows = rows.first_rows(replicas, scaler)
    state = layout.state(
        len(plan), n_rows, config.num_blocks, config.block_size, config.max_num_seqs, replicas
    )
    state.qf[replicas:, layout.COLD_S] = cold(n_rows - replicas)
    state, retries = _plan_tables(state, plan, config, fleet, faults, ledger.index)
    until = horizon(plan, timeout_s) or timeout_s
    c = _config(config, n_rows, timeout_s, until, record_chunks, fleet, faults, jumps)
    c = c._replace(prefix_headroom=_headroom(state, config, fleet))
    room = int(state.ri[:, layout.MAXT].sum()) if record_chunks else 0
    window = 0 if scaler is None else rows.window(scaler, until)
    events = layout.events(len(plan), n_rows, config.max_num_seqs, room, retries, window)
    rows.start(events, replicas, len(state.openers))
    state, events = _run(state, events, c, cold)
    _fill_ledger(ledger, state, events, record_chunks)
    ledger.close(timeout_s)
    return _result(ledger, state, events, until, replicas, fixed=scaler is None)


def _plan_tables(
    state: layout.State,
    plan: Sequence[RequestSpec],
    config: EngineConfig,
    fleet: FleetSpec,
    faults: TargetFaults | None,
    index: dict[str, int],
) -> tuple[layout.State, int]:
    """The plan's tables (`_fill`), its prefix block keys, the openers by arrival, the
    router's generator and the target's fault draws; and how many retries the plan allows."""
    retries, draws = _fill(state, plan, index)
    if config.enable_prefix_caching:
        ids = _prefix_keys(state.ri, plan, config.block_size)
        _, _, tkeys, tvalues, entries = prefix.views(state.prefix)
        packed = prefix.pack(ids, np.full(len(ids), -1), tkeys, tvalues, entries, state.prefix)
        state = state._replace(prefix=packed)
    openers = sorted((s for s in plan if s.after is None), key=lambda s: s.arrival)
    state = state._replace(
        draws=draws,
        openers=np.fromiter((index[s.id] for s in openers), np.int64, len(openers)),
        rng=np.random.default_rng(fleet.seed),  # the reference router's
    )
    if faults is not None and faults.any:
        state = state._replace(faults=_fault_draws(faults, len(plan) + retries))
    return state, retries


def _run(
    state: layout.State, events: layout.Events, c: layout.Config, cold: rows.Draws
) -> tuple[layout.State, layout.Events]:
    """The kernel run to its end, the tables grown each time it pauses for room."""
    kernel.start(state, events, c)
    while not kernel.run(state, events, c):
        if c.autoscale and not scaling.rows_room(events, c):
            state, events, c = rows.more_rows(state, events, c, len(state.ri), cold)
        if c.prefix_headroom and not prefix.room_for_an_event(state, c):
            state = _grown(state, c.prefix_headroom)
    return state, events


def _result(
    ledger: Ledger,
    state: layout.State,
    events: layout.Events,
    until: float,
    replicas: int,
    fixed: bool,
) -> SimResult:
    """The run's result from the ledger and the replicas' rows, as the reference's."""
    n = int(events.ctr[layout.ROWS])
    qi, qf = state.qi[:n], state.qf[:n]
    usages = [
        Usage(*map(float, row))
        for row in qf[:, [layout.BUSY_S, layout.KV_PEAK, layout.KV_S, layout.FULL_S]]
    ]
    return result_of(
        ledger,
        until,
        usages,
        lambda first, last: rows.lives(state, events, first, last),
        int(qi[:, layout.PREEMPTED].sum()),
        int(qi[:, layout.RECOMPUTED].sum()),
        lambda first, last: rows.fleet_stats(state, events, replicas, first, last),
        fixed=fixed,
        core="fast",
    )


def _config(
    config: EngineConfig,
    n_rows: int,
    timeout_s: float,
    until: float,
    record_chunks: bool,
    fleet: FleetSpec,
    faults: TargetFaults | None,
    jumps: bool,
) -> layout.Config:
    """The kernel's configuration: the engine's, the fleet's, the target's faults."""
    cost_kind, cost = _cost(config)
    limit = -1 if fleet.admission_limit is None else fleet.admission_limit
    retry_after = math.nan if fleet.retry_after_s is None else fleet.retry_after_s
    return layout.Config(
        n_rows, config.max_num_seqs, config.max_batched_tokens, config.enable_chunked_prefill,
        config.num_blocks, config.block_size, float(config.overhead_s), float(timeout_s),
        float(until), ROUTINGS[fleet.routing], cost_kind, cost, record_chunks, jumps,
        fleet.central_queue, limit, retry_after, faults is not None and faults.any,
        faults.retry_after_s if faults is not None else math.nan, fleet.affinity_overload,
        fleet.affinity_min_match, 0, fleet.autoscaler is not None, rows.settings(fleet.autoscaler),
    )  # fmt: skip


def _fill_ledger(
    ledger: Ledger, state: layout.State, events: layout.Events, record_chunks: bool
) -> None:
    """The run's rows into the ledger: each request's latest attempt, the attempts retried,
    the token times."""
    ri, rf = state.ri, state.rf
    status, end = ri[:, layout.STATUS], rf[:, layout.END]
    chunks = None
    if record_chunks:
        count = int(events.ctr[layout.CHUNKS])
        chunks = _chunks(status, end, events.chunk_row[:count], events.chunk_t[:count])
    answered = (status == layout.L_OK) & ~np.isnan(end)
    ledger.load(
        rf[:, layout.INTENDED], rf[:, layout.START], rf[:, layout.FIRST], end, status,
        ri[:, layout.KIND], ri[:, layout.OUTPUT], ri[:, layout.ATTEMPT],
        np.where(answered, ri[:, layout.CACHED_T], -1), chunks,
    )  # fmt: skip
    kept = events.retried[: events.ctr[layout.RETRIED]]
    ledger.retried = [
        (int(r[0]), r[1], r[2], r[3], int(r[4]), int(r[5]), int(r[6])) for r in kept.tolist()
    ]


def _fill(
    state: layout.State, plan: Sequence[RequestSpec], index: dict[str, int]
) -> tuple[int, np.ndarray]:
    """The plan's columns of the kernel's tables: numbers per request, each user's next
    request after one ended well or failed (`scenarios.users`), each retry policy and its
    jitter draws (as `Users.session` draws them): how many retries the plan allows, and the
    draws."""
    n, ri, rf = len(plan), state.ri, state.rf
    followers = followers_of(plan)
    for i, spec in enumerate(plan):
        after_ok = followers.get(spec.id)
        if after_ok:
            ri[i, layout.OK_NEXT] = index[after_ok[0].id]
            nxt, _ = next_session(spec, followers)  # a failed turn drops the session's rest
            if nxt is not None:
                ri[i, layout.FAIL_NEXT] = index[nxt.id]
    ri[:, layout.PROMPT] = np.fromiter((s.prompt_tokens for s in plan), np.int64, n)
    ri[:, layout.MAXT] = np.fromiter((s.max_tokens for s in plan), np.int64, n)
    rf[:, layout.ARRIVAL] = np.fromiter((s.arrival for s in plan), np.float64, n)
    rf[:, layout.THINK] = np.fromiter((s.think_s for s in plan), np.float64, n)
    rf[:, layout.NOT_AFTER] = np.fromiter(
        (math.inf if s.not_after is None else s.not_after for s in plan), np.float64, n
    )
    rf[:, layout.PATIENCE] = np.fromiter(
        (math.inf if s.patience_s is None else s.patience_s for s in plan), np.float64, n
    )
    retrying = [(i, s.retry) for i, s in enumerate(plan) if s.retry and s.retry.max_retries]
    most = max((r.max_retries for _, r in retrying), default=0)
    draws = np.zeros((n, max(most, 1)))
    for i, r in retrying:
        ri[i, layout.R_MAX] = r.max_retries
        ri[i, layout.R_ON] = layout.R_429 * (429 in r.on_status) + layout.R_500 * (
            500 in r.on_status
        )
        rf[i, layout.BACKOFF], rf[i, layout.MAX_BACKOFF] = r.backoff_s, r.max_backoff_s
        rf[i, layout.JITTER] = r.jitter
        rf[i, layout.MAX_RETRY_AFTER] = r.max_retry_after_s if r.honour_retry_after else math.nan
        jitter = random.Random(f"{plan[i].id}:{plan[i].text_seed}")  # as Users.session's
        draws[i, : r.max_retries] = [jitter.random() for _ in range(r.max_retries)]
    return sum(r.max_retries for _, r in retrying), draws


def _prefix_keys(ri: np.ndarray, plan: Sequence[RequestSpec], block_size: int) -> np.ndarray:
    """Each request's full prefix blocks (`prefix_block_keys`: the chain hash of the segment
    holding a block's last token, and the block's index), the plan's distinct ones numbered:
    their numbers, one request's after another (`ri`'s KOFF and KLEN filled)."""
    owner: list[int] = []  # per segment with blocks of its own: its request, chain, blocks
    chains: list[int] = []
    bounds: list[int] = []
    for i, spec in enumerate(plan):
        link = covered = 0
        for seg_hash, tokens in spec.prefix:
            link = hash((link, seg_hash, tokens))
            before, covered = covered, min(covered + tokens, spec.prompt_tokens)
            if covered // block_size > before // block_size:
                owner.append(i)
                chains.append(link)
                bounds += (before // block_size, covered // block_size)
            if covered >= spec.prompt_tokens:
                break
    lo, hi = np.array(bounds, np.int64).reshape(-1, 2).T
    counts = hi - lo
    segment = np.repeat(np.arange(len(counts)), counts)
    index = lo[segment] + np.arange(len(segment)) - np.repeat(np.cumsum(counts) - counts, counts)
    chain = np.array(chains, np.int64)[segment]
    order = np.lexsort((index, chain))
    new = np.ones(len(order), bool)
    new[1:] = (np.diff(chain[order]) != 0) | (np.diff(index[order]) != 0)
    numbers = np.empty(len(order), np.int64)
    numbers[order] = np.cumsum(new) - 1
    per_request = np.bincount(np.array(owner, np.int64), counts, len(plan)).astype(np.int64)
    ri[:, layout.KLEN] = per_request
    ri[:, layout.KOFF] = np.cumsum(per_request) - per_request
    return numbers


def _headroom(state: layout.State, config: EngineConfig, fleet: FleetSpec) -> int:
    """The most prefix block entries one event may add (0: no request has a full prefix
    block): a step's end registers blocks its prompts hold (a run another request's block cut
    short goes on once that one is evicted: all a prompt's blocks at most); with
    prefix_affinity each request placed adds its blocks in flight, one an event, or those the
    step's ends or aborts free a slot for, or the openers that arrive together."""
    longest = int(state.ri[:, layout.KLEN].max(initial=0))
    if longest == 0:
        return 0
    steps = min(config.num_blocks, config.max_num_seqs * longest)
    if fleet.routing != "prefix_affinity":
        return steps
    at = state.rf[state.openers, layout.ARRIVAL]
    together = int((np.searchsorted(at, at + 1e-6, "right") - np.arange(len(at))).max(initial=0))
    return steps + (2 * config.max_num_seqs + together + 1) * longest


def _grown(state: layout.State, headroom: int) -> layout.State:
    """Prefix tables with room for `headroom` more entries: the entries' rows doubled (at
    least), the hash table at most a quarter full."""
    ids, memo, old_keys, old_values, old = prefix.views(state.prefix)
    live = int(state.prefix[prefix.KEYS]) + headroom
    entries = np.empty((max(2 * len(old), live), layout.E_FIELDS), np.int64)
    entries[: len(old)] = old
    size = 1 << (4 * live - 1).bit_length()
    tkeys, tvalues = np.full(size, -1, np.int64), np.empty(size, np.int64)
    prefix.rehash(old_keys, old_values, tkeys, tvalues)
    return state._replace(prefix=prefix.pack(ids, memo, tkeys, tvalues, entries, state.prefix))


def _cost(config: EngineConfig) -> tuple[int, np.ndarray]:
    """The cost model as the kernel reads it: its kind, its numbers (then a step table's)."""
    c = config.cost
    if isinstance(c, StepCost):
        numbers = [c.base_s, c.per_decode_seq_s, c.per_prefill_token_s, c.per_context_token_s]
        return layout.LINEAR, np.array([*numbers, 0.0, 0.0])
    if isinstance(c, RooflineCost):
        numbers = [c.base_s, c.per_token_s, c.memory_s, c.per_context_token_s]
        numbers += [c.compute_per_context_token_s, c.per_token_comm_s]
        return layout.ROOFLINE, np.array(numbers)
    assert isinstance(c, DecodeTableCost)
    numbers = [0.0, 0.0, c.per_prefill_token_s, c.per_context_token_s, 0.0, 0.0]
    return layout.TABLE, np.array([*numbers, *c.batch, *c.step_s], np.float64)


def _fault_draws(faults: TargetFaults, sends: int) -> np.ndarray:
    """The injected fault of each of up to `sends` sends, in order (`FaultDraws`): R_429,
    R_500, or 0 (the others change no outcome here)."""
    draws, codes = faults.draws(), {"reject_429": layout.R_429, "error_500": layout.R_500}
    return np.fromiter((codes.get(draws.next() or "", 0) for _ in range(sends)), np.int64, sends)


def _chunks(
    status: np.ndarray, end: np.ndarray, row: np.ndarray, t: np.ndarray
) -> dict[int, list[float]]:
    """Each sent row's token times (a timed-out row's up to its deadline), in time order."""
    late = (status[row] == layout.L_TIMEOUT) & (t > end[row])
    row, t = row[~late], t[~late]
    order = np.argsort(row, kind="stable")
    row, t = row[order], t[order]
    sent = np.flatnonzero(status != layout.L_UNSENT)
    bounds = np.searchsorted(row, sent), np.searchsorted(row, sent, side="right")
    return {int(i): t[a:b].tolist() for i, a, b in zip(sent, bounds[0], bounds[1], strict=True)}
