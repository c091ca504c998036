"""Batch scheduling as vLLM's V1 scheduler does it: one token budget per step, running first.

Each step, every decoding sequence gets one token, then prompts still prefilling get their next
chunk, in admission order, within the step's token budget (decode tokens count against it; as
vLLM requires max_num_batched_tokens >= max_num_seqs, the decoding sequences always fit). When
the KV cache cannot hold a running sequence's next tokens, the newest running sequence is
preempted (its blocks freed, back to the front of the queue, to recompute its prompt and generated
tokens later). If nothing was preempted, waiting sequences are then admitted in order while
`max_num_seqs`, the budget and the KV cache allow. A sequence gains a token in the step that
computes its last uncomputed token.

One guard vLLM's V1 scheduler lacks: a preempted sequence comes back only when the blocks of its
whole context (prompt and generated tokens) are free, and takes them all at once, as vLLM's V0
block manager admitted a prompt. V1 takes a returning sequence's first chunk's blocks only, so
a long context that cannot fit beside the running ones is readmitted, preempted at its next
chunk, readmitted, and so on (vllm-project/vllm#25538: hundreds of preemptions of one request).

Decoding costs nothing per sequence and step: a decoding sequence's token count (and so its KV
blocks) follows a step counter; the scheduler wakes it at the step it finishes, and at each step
takes one block for every decoding sequence whose blocks fill then (grouped by step modulo the
block size), looking at them one by one only when the free blocks do not suffice.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass
from itertools import cycle, islice

from simulator.engine.kvcache import BlockKey, BlockManager, prefix_block_keys

WAITING, RUNNING, FINISHED, ABORTED = range(4)


class StepCounter:
    __slots__ = ("block_size", "n")

    def __init__(self, block_size: int) -> None:
        self.n = 0
        self.block_size = block_size


class EngineSequence:
    """One request inside an engine. Identity is the object (hashable, compared by identity)."""

    __slots__ = (
        "_clock",
        "_computed",
        "_generated",
        "_num_blocks",
        "_phase",
        "_since",
        "_wake_at",
        "cached_keys",
        "cached_prompt_tokens",
        "id",
        "max_tokens",
        "num_preemptions",
        "num_scheduled",
        "prefix",
        "prefix_keys",
        "prompt_tokens",
        "recomputed_tokens",
        "status",
    )

    def __init__(
        self,
        id: str,
        prompt_tokens: int,
        max_tokens: int,
        prefix: tuple[tuple[int, int], ...] = (),  # (hash, tokens) segments, as in RequestSpec
    ):
        self.id = id
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.prefix = prefix
        self.num_preemptions = 0
        self.recomputed_tokens = 0  # computed tokens whose KV a preemption discarded
        # prompt tokens found in the prefix cache at its first admission (a preempted sequence's
        # later hits on its own blocks are not counted again, as vLLM's num_cached_tokens)
        self.cached_prompt_tokens = 0
        self.status = WAITING
        self.num_scheduled = 0  # tokens computed in the step in flight
        self._num_blocks = 0  # KV blocks held (kept by the BlockManager)
        self._phase = -1  # while decoding with its blocks growing on schedule: steps mod size
        self.cached_keys: tuple[BlockKey, ...] = ()
        self.prefix_keys: tuple[BlockKey, ...] | None = None  # full prefix blocks
        self._generated = 0
        self._computed = 0
        self._clock: StepCounter | None = None  # while decoding: generated follows it
        self._since = 0
        self._wake_at = -1  # while decoding: the step it is next woken at

    @property
    def generated(self) -> int:
        """Output tokens so far."""
        if self._clock is None:
            return self._generated
        return self._generated + self._clock.n - self._since

    @property
    def num_computed_tokens(self) -> int:
        """Tokens whose KV is in the cache (while decoding: all but the newest token)."""
        if self._clock is None:
            return self._computed
        return self.prompt_tokens + self.generated - 1

    @property
    def num_blocks(self) -> int:
        """KV blocks held (while decoding: enough for the next token's KV, so computed from it)."""
        if self._phase < 0:
            return self._num_blocks
        clock = self._clock
        assert clock is not None
        return -(-(self.prompt_tokens + self.generated) // clock.block_size)

    @num_blocks.setter
    def num_blocks(self, value: int) -> None:
        self._num_blocks = value

    @property
    def kv_tokens(self) -> int:
        """The most KV this sequence may need: its prompt and every token it may generate."""
        return self.prompt_tokens + self.max_tokens

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.generated

    def __repr__(self) -> str:
        return (
            f"EngineSequence({self.id!r}, prompt {self.prompt_tokens}, "
            f"generated {self.generated}/{self.max_tokens})"
        )


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_batched_tokens: int
    enable_chunked_prefill: bool = True


@dataclass(slots=True)
class Step:
    """What one step computes: `num_scheduled` tokens of each prefill, one of each decode; the
    engine prices it (`duration`, seconds)."""

    prefill: tuple[EngineSequence, ...]  # sequences computing prompt tokens (a chunk or the whole)
    decode: tuple[EngineSequence, ...]  # sequences computing one token after their first
    duration: float = 0.0
    prefill_tokens: int = 0
    context_tokens: int = 0  # KV tokens the step attends over, summed over its sequences
    preempted: tuple[EngineSequence, ...] = ()  # preempted while planning this step

    @property
    def sequences(self) -> tuple[EngineSequence, ...]:
        return self.prefill + self.decode


class Scheduler:
    """Keeps running sequences in two sets, prefilling (a prompt or a recompute, in chunks) and
    decoding."""

    def __init__(self, config: SchedulerConfig, kv: BlockManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[EngineSequence] = deque()
        self.running: dict[EngineSequence, None] = {}  # admission order; the last is the newest
        self.prefilling: dict[EngineSequence, None] = {}
        self.decoding: dict[EngineSequence, None] = {}
        self.num_preemptions = 0
        self.recomputed_tokens = 0  # computed tokens preemptions discarded, over all sequences
        self.steps = StepCounter(kv.block_size)  # updates applied
        self.first_tokens: list[EngineSequence] = []  # emitted their first token in the last update
        # decoding sequences whose next block is due when steps % block_size == phase
        self._phases: list[dict[EngineSequence, None]] = [{} for _ in range(kv.block_size)]
        self._wakes: dict[int, list[EngineSequence]] = {}  # step -> sequences to wake then
        self._wake_steps: list[int] = []  # the keys of _wakes, a heap (past ones removed lazily)
        self._need_block: dict[EngineSequence, None] = {}  # decoding, their blocks full
        self._decode_context = 0  # sum of prompt + generated over the decoding sequences
        self._aborted = False  # a running sequence was aborted since the last update

    def add(self, seq: EngineSequence) -> None:
        seq.status = WAITING
        self.waiting.append(seq)

    def _start_decoding(self, seq: EngineSequence) -> None:
        steps = self.steps.n
        seq._clock, seq._since = self.steps, steps
        self.decoding[seq] = None
        self._decode_context += seq.prompt_tokens + seq._generated
        seq._wake_at = step = steps + seq.max_tokens - seq._generated  # its last token
        wakes = self._wakes.get(step)
        if wakes is None:
            self._wakes[step] = [seq]
            heapq.heappush(self._wake_steps, step)
        else:
            wakes.append(seq)
        self._grow(seq)

    def _grow(self, seq: EngineSequence) -> None:
        """Give a decoding sequence (blocks explicit) the block its next token's KV needs, if it
        needs one, then let its blocks grow on schedule; no block free: `schedule` makes room."""
        bs = self.kv.block_size
        tokens = seq.prompt_tokens + seq.generated  # KV after its next step
        if tokens > seq._num_blocks * bs and not self.kv.append_block(seq):
            self._need_block[seq] = None
            return
        seq._phase = phase = (self.steps.n + 1 - tokens) % bs
        self._phases[phase][seq] = None

    def _fix_blocks(self, seq: EngineSequence) -> None:
        """Blocks counted explicitly again (before they change other than on schedule)."""
        if seq._phase >= 0:
            seq._num_blocks = seq.num_blocks
            del self._phases[seq._phase][seq]
            seq._phase = -1

    def _stop_decoding(self, seq: EngineSequence) -> None:
        self._fix_blocks(seq)
        generated = seq.generated
        seq._generated, seq._computed = generated, seq.prompt_tokens + generated - 1
        seq._clock = None
        seq._wake_at = -1
        del self.decoding[seq]
        self._need_block.pop(seq, None)
        self._decode_context -= seq.prompt_tokens + generated

    def _leave(self, seq: EngineSequence) -> None:
        """Take a running sequence out of the running sets and free its blocks."""
        del self.running[seq]
        if seq._clock is not None:
            self._stop_decoding(seq)
        else:
            del self.prefilling[seq]
        self.kv.free(seq)

    def abort(self, seq: EngineSequence) -> None:
        """Drop a waiting or running sequence (a finished one stays finished)."""
        if seq.status == RUNNING:
            self._leave(seq)
            self._aborted = True
        elif seq.status == WAITING:
            self.waiting.remove(seq)
        else:
            return
        seq.status = ABORTED

    def _preempt(self, seq: EngineSequence) -> None:
        self._leave(seq)
        seq.recomputed_tokens += seq._computed
        self.recomputed_tokens += seq._computed
        seq._computed = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = WAITING
        self.waiting.appendleft(seq)

    def _make_room(self, seq: EngineSequence, end: int, preempted: list[EngineSequence]) -> bool:
        """Blocks for `seq` up to `end` tokens, preempting the newest running until they fit.

        False when `seq` itself had to go (it was the newest left).
        """
        while not self.kv.allocate(seq, end):
            victim = next(reversed(self.running))
            self._preempt(victim)
            preempted.append(victim)
            if victim is seq:
                return False
        return True

    def schedule(self) -> Step:
        """Decoding sequences (a token each), prompt chunks in progress, then, if nothing was
        preempted, admissions; within the step's token budget."""
        bs = self.kv.block_size
        preempted: list[EngineSequence] = []
        if self._need_block:
            kv, need = self.kv, self._need_block
            for seq in list(need):
                if seq.status == RUNNING and (
                    kv.append_block(seq) or self._make_room(seq, seq.num_tokens, preempted)
                ):
                    del need[seq]
                    self._grow(seq)
        budget = self.config.max_batched_tokens - len(self.decoding)
        prefill: list[EngineSequence] = []
        prefill_tokens = context = 0
        if self.prefilling:
            for seq in list(self.prefilling):
                if budget <= 0:
                    break
                if seq.status != RUNNING:  # preempted making room for an older one
                    continue
                computed = seq._computed
                remaining = seq.prompt_tokens + seq._generated - computed
                n = remaining if remaining < budget else budget
                end = computed + n
                if end > seq.num_blocks * bs and not self._make_room(seq, end, preempted):
                    break
                seq.num_scheduled = n
                budget -= n
                prefill_tokens += n
                context += end
                prefill.append(seq)
        decode = tuple(self.decoding)
        context += self._decode_context
        if not preempted and self.waiting and len(self.running) < self.config.max_num_seqs:
            n_admitted = self._admit(budget, prefill)
            for seq in prefill[len(prefill) - n_admitted :]:
                prefill_tokens += seq.num_scheduled
                context += seq._computed + seq.num_scheduled
        return Step(
            tuple(prefill) if prefill else (),
            decode,
            0.0,
            prefill_tokens,
            context,
            tuple(preempted) if preempted else (),
        )

    def _admit(self, budget: int, prefill: list[EngineSequence]) -> int:
        """Admit waiting sequences in order while they fit; returns how many were appended."""
        cfg, kv, waiting = self.config, self.kv, self.waiting
        admitted = 0
        while waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = waiting[0]
            tokens = seq.prompt_tokens + seq._generated  # a waiting sequence is not decoding
            hits: list[BlockKey] = []
            if kv.enable_prefix_caching and seq.prefix:
                keys = seq.prefix_keys
                if keys is None:
                    keys = prefix_block_keys(seq.prefix, kv.block_size, seq.prompt_tokens)
                    seq.prefix_keys = keys
                hits = kv.cached_run(keys)
                while hits and len(hits) * kv.block_size >= tokens:
                    hits.pop()  # compute at least the last token, to sample from it
            cached = len(hits) * kv.block_size
            remaining = tokens - cached
            if remaining > budget and not cfg.enable_chunked_prefill and prefill:
                break  # without chunking a prompt goes whole (alone, when over the budget)
            n = remaining if remaining <= budget or not cfg.enable_chunked_prefill else budget
            # a preempted sequence takes its whole context's blocks (see the module docstring)
            if not kv.allocate(seq, tokens if seq.num_preemptions else cached + n, hits):
                break
            waiting.popleft()
            seq.status = RUNNING
            seq._computed = cached
            if not seq.num_preemptions:
                seq.cached_prompt_tokens = cached
            seq.num_scheduled = n
            self.running[seq] = None
            self.prefilling[seq] = None
            prefill.append(seq)
            budget -= n
            admitted += 1
        return admitted

    def steady(self) -> bool:
        """Whether the next steps repeat the last planned one while no sequence arrives, leaves
        or lacks a block: only decoding, nothing to admit (none waits, or no slot is free)."""
        return (
            not self.prefilling
            and not self._need_block
            and (not self.waiting or len(self.running) >= self.config.max_num_seqs)
        )

    def quiet_steps(self, limit: int) -> int:
        """Of the next `limit` steps of a steady batch, how many run up to and including the
        first that changes it: one where a sequence finishes or the free blocks fall short."""
        steps, heap = self.steps.n, self._wake_steps
        while heap and heap[0] <= steps:
            heapq.heappop(heap)
        n = heap[0] - steps if heap and heap[0] - steps < limit else limit
        bs, free, phases = self.kv.block_size, self.kv.num_free, self._phases
        if len(self.decoding) * (n // bs + 1) <= free:
            return n  # even a full block for each sequence every block_size steps fits
        for i in range(1, n + 1):
            free -= len(phases[(steps + i) % bs])
            if free < 0:
                return i
        return n

    def advance(self, k: int) -> list[int]:
        """Apply `k` steps of a steady batch in which no sequence finishes and every block is at
        hand (see `quiet_steps`); returns the blocks taken at each."""
        steps, bs = self.steps.n, self.kv.block_size
        due = [len(p) for p in self._phases]  # blocks due at a step, by step % block_size
        first = (steps + 1) % bs
        taken = list(islice(cycle(due[first:] + due[:first]), k))
        if not self.kv.take(sum(taken)):
            raise RuntimeError(f"advance({k}) ran out of KV blocks")
        self.steps.n = steps + k
        self._decode_context += k * len(self.decoding)
        self.first_tokens = []
        return taken

    def _finish(self, seq: EngineSequence, finished: list[EngineSequence]) -> None:
        seq.status = FINISHED
        self._leave(seq)
        finished.append(seq)

    def update(
        self, prefill: tuple[EngineSequence, ...], decode: tuple[EngineSequence, ...]
    ) -> tuple[list[EngineSequence], list[EngineSequence]]:
        """Apply a computed batch: (sequences that gained a token, those that finished)."""
        if self._aborted:  # some left while the step ran
            prefill = tuple(s for s in prefill if s.status == RUNNING)
            decode = tuple(s for s in decode if s.status == RUNNING)
            self._aborted = False
        finished: list[EngineSequence] = []
        self.first_tokens = []
        self.steps.n += 1  # every decoding sequence gains its token
        self._decode_context += len(decode)
        emitted = list(decode)
        steps = self.steps.n
        # blocks first (a finishing sequence's counts too: its blocks are freed right after)
        due = self._phases[steps % self.kv.block_size]
        if due and not self.kv.take(len(due)):  # too few free blocks: one by one, oldest first
            order = {seq: i for i, seq in enumerate(self.running)}
            for seq in sorted(due, key=order.__getitem__):
                self._fix_blocks(seq)
                seq._num_blocks -= 1  # the count included the block it has yet to get
                self._grow(seq)
        wakes = self._wakes.pop(steps, None)
        if wakes:
            for seq in wakes:
                if seq._wake_at == steps:  # else preempted or aborted since
                    self._finish(seq, finished)
        kv = self.kv
        for seq in prefill:
            seq._computed += seq.num_scheduled
            if seq.prefix_keys and len(seq.cached_keys) < len(seq.prefix_keys):
                kv.register(seq, seq.prefix_keys, seq._computed)
            if seq._computed < seq.prompt_tokens + seq._generated:
                continue  # a chunk of a prompt: no token yet
            seq._generated += 1
            emitted.append(seq)
            if seq._generated == 1:
                self.first_tokens.append(seq)
            if seq._generated >= seq.max_tokens:
                self._finish(seq, finished)
                continue
            del self.prefilling[seq]
            self._start_decoding(seq)
        return emitted, finished
