"""A paged KV cache: fixed-size blocks, allocated as a sequence's tokens are computed.

Counts blocks rather than naming them: a sequence holds `num_blocks`, of which the leading
`cached_keys` are shared prefix blocks (with prefix caching on) and the rest are its own. A shared
block is ref-counted; when no sequence holds it, it stays in the cache, reusable, until a new
allocation needs the space and evicts it, least recently used first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Container, Hashable, Sequence
from typing import Protocol

BlockKey = Hashable


class Holder(Protocol):
    """What the block manager keeps on a sequence (see `simulator.engine.core.EngineSequence`)."""

    num_blocks: int
    cached_keys: tuple[BlockKey, ...]


def prefix_block_keys(
    prefix: Sequence[tuple[int, int]], block_size: int, limit_tokens: int
) -> tuple[BlockKey, ...]:
    """Keys of the full blocks inside a prefix chain of (hash, tokens) segments.

    A block's key is the chain hash up to the segment holding its last token, with its index:
    two chains share a block exactly when they agree on every segment it covers.
    """
    keys: list[BlockKey] = []
    chain, covered = 0, 0
    for seg_hash, tokens in prefix:
        chain = hash((chain, seg_hash, tokens))
        covered = min(covered + tokens, limit_tokens)
        while (len(keys) + 1) * block_size <= covered:
            keys.append((chain, len(keys)))
        if covered >= limit_tokens:
            break
    return tuple(keys)


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = False):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(
                f"num_blocks and block_size must be >= 1, got {num_blocks} and {block_size}"
            )
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.num_free = num_blocks  # blocks no sequence holds (cached-but-unused ones included)
        self._refs: dict[BlockKey, int] = {}  # cached block -> sequences holding it
        self._evictable: OrderedDict[BlockKey, None] = OrderedDict()  # ref 0, oldest first

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self._refs)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def cached_run(self, keys: Sequence[BlockKey]) -> list[BlockKey]:
        """The leading keys whose blocks are in the cache (what a new sequence may reuse)."""
        run: list[BlockKey] = []
        for key in keys:
            if key not in self._refs:
                break
            run.append(key)
        return run

    def cached_run_length(self, keys: Sequence[BlockKey], also: Container[BlockKey] = ()) -> int:
        """How many leading keys are in the cache, or in `also` (blocks about to be)."""
        refs, n = self._refs, 0
        for key in keys:
            if key not in refs and key not in also:
                break
            n += 1
        return n

    def allocate(self, seq: Holder, tokens: int, hits: Sequence[BlockKey] = ()) -> bool:
        """Make `seq` hold blocks for `tokens` tokens, taking `hits` (cached blocks) first.

        All or nothing: False, with nothing changed, when the free blocks do not suffice.
        """
        new = self.blocks_for(tokens) - seq.num_blocks - len(hits)
        revived = sum(1 for k in hits if self._refs[k] == 0) if hits else 0
        if new < 0:
            new = 0
        if new + revived > self.num_free:
            return False
        if hits:
            refs = self._refs
            for k in hits:
                if refs[k] == 0:
                    del self._evictable[k]
                refs[k] += 1
            seq.cached_keys = (*seq.cached_keys, *hits)
        self.num_free -= new + revived
        seq.num_blocks += new + len(hits)
        while len(self._evictable) > self.num_free:  # the space now taken held cached blocks
            key, _ = self._evictable.popitem(last=False)
            del self._refs[key]
        return True

    def take(self, n: int) -> bool:
        """`n` blocks for sequences that count their own (decoding ones), all or none."""
        if n > self.num_free:
            return False
        self.num_free -= n
        while len(self._evictable) > self.num_free:
            key, _ = self._evictable.popitem(last=False)
            del self._refs[key]
        return True

    def append_block(self, seq: Holder) -> bool:
        """One more block for `seq` (a decoding sequence's next token), if any is free."""
        if self.num_free == 0:
            return False
        self.num_free -= 1
        seq.num_blocks += 1
        if len(self._evictable) > self.num_free:
            key, _ = self._evictable.popitem(last=False)
            del self._refs[key]
        return True

    def register(self, seq: Holder, keys: Sequence[BlockKey], computed_tokens: int) -> None:
        """Offer `seq`'s computed full prefix blocks (keys past its cached run) to the cache.

        A block another sequence already cached stays private: the run stops there.
        """
        held = seq.cached_keys
        i = len(held)
        stop = min(len(keys), computed_tokens // self.block_size)
        if i >= stop:
            return
        added = []
        refs = self._refs
        while i < stop and keys[i] not in refs:
            refs[keys[i]] = 1
            added.append(keys[i])
            i += 1
        if added:
            seq.cached_keys = (*held, *added)

    def free(self, seq: Holder) -> None:
        """Release every block `seq` holds: its own are free; a shared one is free (cached,
        reusable until evicted) once no other sequence holds it."""
        released = seq.num_blocks - len(seq.cached_keys)
        if seq.cached_keys:
            refs = self._refs
            for key in reversed(seq.cached_keys):  # a chain's tail is evicted before its head
                refs[key] -= 1
                if refs[key] == 0:
                    self._evictable[key] = None
                    released += 1
            seq.cached_keys = ()
        self.num_free += released
        seq.num_blocks = 0
