"""Bookkeeping for the batched llama.cpp engine: its slots (one llama.cpp sequence id each,
remembering the tokens that sequence's KV cache holds and the weights they were computed
under) and the rule that picks which adapter group runs. Pure Python: it knows nothing of
llama.cpp, grammars or requests beyond their adapter key and arrival time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# The weights a KV cache was computed with: (loaded adapter id, scale), or BASE. Ids, not
# names: an adapter unloaded and loaded again under the same name is other weights.
AdapterKey = tuple[int | None, float]
BASE: AdapterKey = (None, 0.0)


@dataclass(eq=False)
class Slot:
    id: int  # the llama.cpp sequence id
    tokens: list[int] = field(default_factory=list)  # what this sequence's KV cache holds, in order
    key: AdapterKey = BASE
    busy: bool = False
    used_at: int = 0  # a counter, for least-recently-used choice


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def pick_slot(slots: Sequence[Slot], tokens: Sequence[int], key: AdapterKey) -> tuple[Slot, int] | None:
    """The free slot for a prompt, and how many of its cached tokens it keeps.

    The slot whose cache the prompt extends wins (an agent loop resending its growing
    conversation); a cache is only taken over when the prompt reuses at least half of it
    (or the whole prompt is cached: a retry), so an unrelated request goes to the least
    recently used slot instead of wiping another conversation's history.
    Among slots that serve the prompt equally well, one next to busy slots wins: with one KV
    stream per slot, llama.cpp evaluates only consecutive sequence ids in one pass over the
    weights, so every gap between busy slots costs each step another pass (4 scattered
    sequences decode at the cost of 4 single ones; 8 adjacent ones cost 1.3 single ones).
    The last prompt token is always evaluated again (its logits)."""
    free = [s for s in slots if not s.busy]
    if not free:
        return None
    busy = {s.id for s in slots if s.busy}

    def reuse(slot: Slot) -> int:
        if slot.key != key:
            return 0
        n = common_prefix(slot.tokens, tokens)
        return n if 2 * n >= len(slot.tokens) or n >= len(tokens) - 1 else 0

    def rank(slot: Slot) -> tuple[int, bool, int, int]:
        n = reuse(slot)
        spare = len(slot.tokens) == n  # taking it loses nothing cached
        # A history another prompt shares no prefix with is only lost in LRU order, never for
        # adjacency: wiping a waiting agent's cache costs a whole prefill later.
        neighbours = len(busy & {slot.id - 1, slot.id + 1}) if n or spare else 0
        return n, spare, neighbours, -slot.used_at

    best = max(free, key=rank)
    return best, min(reuse(best), max(0, len(tokens) - 1))


@dataclass(frozen=True)
class Waiter:
    key: AdapterKey
    since: float  # time.monotonic() when it arrived


def group_to_admit(
    waiting: Sequence[Waiter], active: AdapterKey, running: int, now: float, patience_s: float
) -> AdapterKey | None:
    """Which adapter group may start sequences now; None: none (draining to switch).

    Sequences in one batch share the context's adapter set, so requests for the running
    (adapter, scale) join the batch while requests for another wait, but only `patience_s`:
    past it, nothing new starts until the batch drains, then the oldest waiter's group runs.
    Every waiter becomes the oldest in finite time, so no group starves."""
    if running == 0:
        return waiting[0].key if waiting else active
    for waiter in waiting:
        if waiter.key != active:
            return None if now - waiter.since > patience_s else active
    return active
