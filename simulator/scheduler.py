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
    next_stop: int = 0  # while decoding: the token count at which to finish or grow the KV
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
    """Running sequences are kept in two sets: those prefilling (a prompt, or a recompute, in
    chunks) and those decoding. A decoding sequence costs a few operations a step; one that will
    need another KV block for its next token is noted when it fills its last one."""

    def __init__(self, config: SchedulerConfig, kv: BlockManager):
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: dict[Sequence, None] = {}  # admission order; the last is the newest
        self.prefilling: dict[Sequence, None] = {}
        self.decoding: dict[Sequence, None] = {}
        self.num_preemptions = 0
        self._need_block: dict[Sequence, None] = {}  # decoding, their blocks full
        self._decode_context = 0  # sum of prompt + generated over the decoding sequences
        self._aborted = False  # a running sequence was aborted since the last update

    def add(self, seq: Sequence) -> None:
        seq.status = WAITING
        self.waiting.append(seq)

    def _leave(self, seq: Sequence) -> None:
        """Take a running sequence out of the running sets and free its blocks."""
        del self.running[seq]
        if seq in self.decoding:
            del self.decoding[seq]
            self._need_block.pop(seq, None)
            self._decode_context -= seq.prompt_tokens + seq.generated
        else:
            del self.prefilling[seq]
        self.kv.free(seq)

    def abort(self, seq: Sequence) -> None:
        if seq.status == RUNNING:
            self._leave(seq)
            self._aborted = True
        elif seq.status == WAITING:
            self.waiting.remove(seq)
        seq.status = ABORTED

    def _preempt(self, seq: Sequence) -> None:
        self._leave(seq)
        seq.recomputed_tokens += seq.num_computed_tokens
        seq.num_computed_tokens = 0
        seq.num_preemptions += 1
        self.num_preemptions += 1
        seq.status = WAITING
        self.waiting.appendleft(seq)

    def _make_room(self, seq: Sequence, end: int, preempted: list[Sequence]) -> bool:
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

    def schedule(self) -> Batch:
        """Decoding sequences first (a token each), then prompt chunks in progress, then, if
        nothing was preempted, admissions; all within the step's token budget."""
        bs = self.kv.block_size
        budget = self.config.max_batched_tokens
        preempted: list[Sequence] = []
        decoding = self.decoding
        decode_budget = min(len(decoding), budget)
        budget -= decode_budget
        if self._need_block:
            for seq in list(self._need_block):
                if seq.status == RUNNING and self._make_room(
                    seq, seq.num_computed_tokens + 1, preempted
                ):
                    del self._need_block[seq]
                    self._arm(seq)
        prefill: list[Sequence] = []
        prefill_tokens = context = 0
        if self.prefilling:
            for seq in list(self.prefilling):
                if budget <= 0:
                    break
                if seq.status != RUNNING:  # preempted making room for an older one
                    continue
                computed = seq.num_computed_tokens
                remaining = seq.prompt_tokens + seq.generated - computed
                n = remaining if remaining < budget else budget
                end = computed + n
                if end > seq.num_blocks * bs and not self._make_room(seq, end, preempted):
                    break
                seq.num_scheduled = n
                budget -= n
                prefill_tokens += n
                context += end
                prefill.append(seq)
        if len(decoding) <= decode_budget:
            decode = tuple(decoding)
            context += self._decode_context
        else:  # fewer tokens than decoding sequences: the oldest go
            decode = tuple(decoding)[:decode_budget]
            context += sum(s.prompt_tokens + s.generated for s in decode)
        budget += decode_budget - len(decode)
        if not preempted and self.waiting:
            n_admitted = self._admit(budget, prefill)
            for seq in prefill[len(prefill) - n_admitted :]:
                prefill_tokens += seq.num_scheduled
                context += seq.num_computed_tokens + seq.num_scheduled
        return Batch(tuple(prefill), decode, prefill_tokens, context, tuple(preempted))

    def _admit(self, budget: int, prefill: list[Sequence]) -> int:
        """Admit waiting sequences in order while they fit; returns how many were appended."""
        cfg, kv, waiting = self.config, self.kv, self.waiting
        admitted = 0
        while waiting and budget > 0 and len(self.running) < cfg.max_num_seqs:
            seq = waiting[0]
            hits: list[BlockKey] = []
            if kv.enable_prefix_caching and seq.prefix:
                keys = seq.prefix_keys
                if keys is None:
                    keys = prefix_block_keys(seq.prefix, kv.block_size, seq.prompt_tokens)
                    seq.prefix_keys = keys
                hits = kv.cached_run(keys)
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
            self.prefilling[seq] = None
            prefill.append(seq)
            budget -= n
            admitted += 1
        return admitted

    def _finish(self, seq: Sequence, finished: list[Sequence]) -> None:
        seq.status = FINISHED
        self._leave(seq)
        finished.append(seq)

    def _arm(self, seq: Sequence) -> None:
        """Set when a decoding sequence next needs attention: at its last token, or when its
        next token's KV needs a block it does not hold (generated = blocks x size - prompt + 1)."""
        grow_at = seq.num_blocks * self.kv.block_size - seq.prompt_tokens + 1
        if grow_at <= seq.generated:
            self._need_block[seq] = None
            seq.next_stop = seq.max_tokens
        else:
            seq.next_stop = seq.max_tokens if seq.max_tokens < grow_at else grow_at

    def update(
        self, prefill: tuple[Sequence, ...], decode: tuple[Sequence, ...]
    ) -> tuple[list[Sequence], list[Sequence]]:
        """Apply a computed batch: (sequences that gained a token, those that finished)."""
        if self._aborted:  # some left while the step ran
            prefill = tuple(s for s in prefill if s.status == RUNNING)
            decode = tuple(s for s in decode if s.status == RUNNING)
            self._aborted = False
        finished: list[Sequence] = []
        self._decode_context += len(decode)
        for seq in decode:  # one token each
            seq.num_computed_tokens += 1
            generated = seq.generated = seq.generated + 1
            if generated >= seq.next_stop:
                if generated >= seq.max_tokens:
                    self._finish(seq, finished)
                else:
                    self._need_block[seq] = None
                    seq.next_stop = seq.max_tokens
        emitted = list(decode)
        kv = self.kv
        for seq in prefill:
            seq.num_computed_tokens += seq.num_scheduled
            if seq.prefix_keys and len(seq.cached_keys) < len(seq.prefix_keys):
                kv.register(seq, seq.prefix_keys, seq.num_computed_tokens)
            if seq.num_computed_tokens < seq.prompt_tokens + seq.generated:
                continue  # a chunk of a prompt: no token yet
            seq.generated += 1
            emitted.append(seq)
            if seq.generated >= seq.max_tokens:
                self._finish(seq, finished)
                continue
            del self.prefilling[seq]
            self.decoding[seq] = None
            self._decode_context += seq.prompt_tokens + seq.generated
            self._arm(seq)
        return emitted, finished
