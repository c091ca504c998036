"""Batch scheduling as vLLM's V1 scheduler does it: one token budget per step, running first.

Each step, the running sequences are served first, in admission order: one token each while
decoding, or the next chunk of a prompt still prefilling. When the KV cache cannot hold a running
sequence's next tokens, the newest running sequence is preempted (its blocks freed, back to the
front of the queue, to recompute its prompt and generated tokens later). If nothing was preempted,
waiting sequences are then admitted in order while `max_num_seqs`, the token budget and the KV
cache allow. A sequence gains a token in the step that computes its last uncomputed token.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from simulator.kvcache import BlockKey, BlockManager, prefix_block_keys

WAITING, RUNNING, FINISHED, ABORTED = range(4)


@dataclass(eq=False, slots=True)
class Sequence:
    id: str
    prompt_tokens: int
    max_tokens: int
    prefix: tuple[tuple[int, int], ...] = ()  # (hash, tokens) segments, as in RequestSpec
    generated: int = 0
    num_computed_tokens: int = 0  # tokens whose KV is in the cache
    num_preemptions: int = 0
    recomputed_tokens: int = 0  # computed tokens whose KV a preemption discarded
    cached_prompt_tokens: int = 0  # prompt tokens found in the prefix cache, over admissions
    status: int = WAITING
    num_scheduled: int = 0  # tokens computed in the step in flight
    num_blocks: int = 0  # KV blocks held (kept by the BlockManager)
    cached_keys: list[BlockKey] = field(default_factory=list)
    prefix_keys: tuple[BlockKey, ...] | None = None  # full prefix blocks, worked out on admission

    @property
    def kv_tokens(self) -> int:
        """The most KV this sequence may need: its prompt and every token it may generate."""
        return self.prompt_tokens + self.max_tokens

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.generated


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_batched_tokens: int
    enable_chunked_prefill: bool = True


@dataclass(frozen=True, slots=True)
class Batch:
    """What one step computes: `num_scheduled` tokens of each sequence (kept on the sequence)."""

    prefill: tuple[Sequence, ...]
    decode: tuple[Sequence, ...]
    prefill_tokens: int
    context_tokens: int  # KV tokens the step attends over, summed over its sequences
    preempted: tuple[Sequence, ...] = ()


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: BlockManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # admission order; the last is the newest
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = WAITING
        self.waiting.append(seq)

    def abort(self, seq: Sequence) -> None:
        if seq.status == RUNNING:
            del self.running[seq]
            self.kv.free(seq)
        elif seq.status == WAITING:
            self.waiting.remove(seq)
        seq.status = ABORTED

    def _preempt(self, seq: Sequence) -> None:
        del self.running[seq]
        self.kv.free(seq)
        seq.recomputed_tokens += seq.num_computed_tokens
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = WAITING
        self.waiting.appendleft(seq)

    def schedule(self) -> Batch:
        kv, bs = self.kv, self.kv.block_size
        budget = self.config.max_batched_tokens
        prefill: list[Sequence] = []
        decode: list[Sequence] = []
        preempted: list[Sequence] = []
        prefill_tokens = context = 0
        order = list(self.running)
        i = 0
        while i < len(order) and budget > 0:
            seq = order[i]
            remaining = seq.prompt_tokens + seq.generated - seq.num_computed_tokens
            n = remaining if remaining < budget else budget
            end = seq.num_computed_tokens + n
            if end > seq.num_blocks * bs:  # needs another block: preempt the newest until it fits
                while not kv.allocate(seq, end):
                    victim = order.pop()
                    self._preempt(victim)
                    preempted.append(victim)
                    if victim is seq:
                        break
                if seq.status != RUNNING:
                    break
            seq.num_scheduled = n
            budget -= n
            context += end
            if remaining == 1 and seq.generated:
                decode.append(seq)
            else:
                prefill.append(seq)
                prefill_tokens += n
            i += 1
        if not preempted:
            n_admitted = self._admit(budget, prefill)
            for seq in prefill[len(prefill) - n_admitted :]:
                prefill_tokens += seq.num_scheduled
                context += seq.num_computed_tokens + seq.num_scheduled
        return Batch(tuple(prefill), tuple(decode), prefill_tokens, context, tuple(preempted))

    def _admit(self, budget: int, prefill: list[Sequence]) -> int:
        """Admit waiting sequences in order while they fit; returns how many were appended."""
        cfg, kv, waiting = self.config, self.kv, self.waiting
        admitted = 0
        while waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = waiting[0]
            hits: list[BlockKey] = []
            if kv.enable_prefix_caching and seq.prefix:
                if seq.prefix_keys is None:
                    seq.prefix_keys = prefix_block_keys(
                        seq.prefix, kv.block_size, seq.prompt_tokens
                    )
                hits = kv.cached_run(seq.prefix_keys)
                while hits and len(hits) * kv.block_size >= seq.num_tokens:
                    hits.pop()  # compute at least the last token, to sample from it
            cached = len(hits) * kv.block_size
            remaining = seq.num_tokens - cached
            if remaining > budget and not cfg.enable_chunked_prefill and prefill:
                break  # without chunking a prompt goes whole (alone, when over the budget)
            n = remaining if remaining <= budget or not cfg.enable_chunked_prefill else budget
            if not kv.allocate(seq, cached + n, hits):
                break
            waiting.popleft()
            seq.status = RUNNING
            seq.num_computed_tokens = cached
            seq.cached_prompt_tokens += cached
            seq.num_scheduled = n
            self.running[seq] = None
            prefill.append(seq)
            budget -= n
            admitted += 1
        return admitted

    def update(
        self, prefill: tuple[Sequence, ...], decode: tuple[Sequence, ...]
    ) -> tuple[list[Sequence], list[Sequence]]:
        """Apply a computed batch: (sequences that gained a token, those that finished)."""
        emitted: list[Sequence] = []
        finished: list[Sequence] = []
        kv = self.kv
        for part in (prefill, decode):
            for seq in part:
                if seq.status != RUNNING:  # aborted while the step ran
                    continue
                seq.num_computed_tokens += seq.num_scheduled
                if seq.prefix_keys and len(seq.cached_keys) < len(seq.prefix_keys):
                    kv.register(seq, seq.prefix_keys, seq.num_computed_tokens)
                if seq.num_computed_tokens < seq.prompt_tokens + seq.generated:
                    continue  # a chunk of a prompt: no token yet
                seq.generated += 1
                emitted.append(seq)
                if seq.generated >= seq.max_tokens:
                    seq.status = FINISHED
                    del self.running[seq]
                    kv.free(seq)
                    finished.append(seq)
        return emitted, finished
