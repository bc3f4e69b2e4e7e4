"""The embedded engine's decode loop: continuous batching over N slots of one llama.cpp context.

One thread owns the context. Each step decodes one llama_batch holding the next token of
every running sequence plus prompt chunks of newly started ones (a bounded chunk while others
decode, so a long prompt never stalls them for long). While llama.cpp evaluates the step,
llguidance computes the next grammar masks of all constrained sequences together, off the
GIL. Sampling, detokenizing and stop strings are per sequence, as is the seeded generator,
so what a seeded request samples depends only on its logits. This module knows llama.cpp
only through the small `Backend` the engine hands it, and nothing of tools or HTTP.
"""

from __future__ import annotations

import codecs
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from server.engines.base import Cancel, Event, Finish, GenerateRequest, Piece
from server.engines.sampling import sample, softmax
from server.engines.slots import BASE, AdapterKey, Slot, Waiter, group_to_admit, pick_slot
from server.engines.stops import StopMatcher
from server.errors import EngineError, GatewayError, InvalidRequest

Emit = Callable[[Event | BaseException], None]
# Past this wait, requests for another adapter stop the running group from taking new ones.
SWITCH_PATIENCE_S = 1.0
# With one KV stream per slot, llama.cpp evaluates only consecutive sequence ids in one pass
# over the weights (llama_batch_allocr::split_equal, `sequential`): every gap between the
# step's slots costs another pass (~70 ms for a 0.5B model on one core), while a throwaway
# token in an idle slot costs ~15 ms. So gaps of up to this many idle slots are filled.
GAP_FILL = 3


class Backend(Protocol):
    """What the loop needs of the model: llama.cpp handles, tokenizer, grammars, adapters."""

    @property
    def lib(self) -> Any: ...  # the llama_cpp module
    @property
    def ctx(self) -> Any: ...  # the llama_context pointer
    @property
    def n_vocab(self) -> int: ...
    @property
    def context_length(self) -> int: ...  # per sequence

    def tokenize(self, text: str) -> list[int]: ...
    def piece(self, token: int) -> bytes: ...
    def is_eog(self, token: int) -> bool: ...
    def matcher(self, grammar: str) -> Any: ...
    def resolve(self, adapter: str | None, scale: float) -> AdapterKey: ...
    def loaded(self, key: AdapterKey) -> bool: ...
    def set_adapter(self, key: AdapterKey) -> None: ...
    def reap(self) -> None: ...


@dataclass(eq=False)
class Job:
    """A generation, or a probe (`candidates`: the next-token probabilities of their first tokens)."""

    prompt: str
    adapter: str | None
    scale: float
    cancel: Cancel
    emit: Emit
    request: GenerateRequest | None = None
    candidates: Sequence[str] = ()
    probs: Future[list[float]] | None = None
    since: float = field(default_factory=time.monotonic)
    key: AdapterKey = BASE
    tokens: list[int] = field(default_factory=list)

    def fail(self, exc: BaseException) -> None:
        if self.probs is not None:
            self.probs.set_exception(exc)
        else:
            self.emit(exc)


@dataclass(eq=False)
class Seq:
    job: Job
    slot: Slot
    matcher: Any = None
    rng: np.random.Generator | None = None
    decoder: Any = None
    stops: StopMatcher | None = None
    produced: int = 0
    row: int = 0  # its row in this step's grammar masks
    next_token: int | None = None  # sampled, to be evaluated in the next step

    @property
    def prefilling(self) -> bool:
        return self.next_token is None


class Scheduler:
    def __init__(self, backend: Backend, slots: int, n_batch: int, prefill_chunk: int, *, split_kv: bool = True):
        import llguidance

        self._b = backend
        self._lib = backend.lib
        self._slots = [Slot(i) for i in range(slots)]
        self._n_batch = max(n_batch, slots + prefill_chunk)
        self._chunk = prefill_chunk
        self._split_kv = split_kv
        self._batch = self._lib.llama_batch_init(self._n_batch, 0, 1)
        self._masks = np.zeros((slots, (backend.n_vocab + 31) // 32), dtype=np.int32)
        self._llexec = llguidance.LLExecutor(1)
        self._side = ThreadPoolExecutor(1, thread_name_prefix="llguidance")
        self._inbox: deque[Job | Callable[[], None]] = deque()
        self._cv = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._running: list[Seq] = []
        self.active: AdapterKey = BASE
        self._clock = 0
        self._closing = False
        self.prefilled = 0  # prompt tokens evaluated since start (prefix reuse shows here)
        self._thread = threading.Thread(target=self._loop, name="llamacpp-batch", daemon=True)
        self._thread.start()

    # -- from other threads ----------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cv:
            if self._closing:
                raise EngineError("the engine is closed")
            self._inbox.append(job)
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> Future[Any]:
        """Run `fn` on the loop thread between two steps (adapter loads, unloads)."""
        done: Future[Any] = Future()

        def run() -> None:
            try:
                done.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                done.set_exception(exc)

        with self._cv:
            self._inbox.append(run)
            self._cv.notify()
        return done

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        self._thread.join()
        self._side.shutdown(wait=True)
        self._lib.llama_batch_free(self._batch)

    def running_with(self, adapter_id: int) -> bool:
        """Whether a running sequence uses this adapter (loop thread only)."""
        return any(s.job.key[0] == adapter_id for s in self._running)

    def forget(self, adapter_id: int) -> None:
        """Drop idle slot caches computed under an unloaded adapter (loop thread only)."""
        for slot in self._slots:
            if slot.key[0] == adapter_id and not slot.busy:
                self._wipe(slot)

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._inbox or self._running or self._waiting or self._closing):
                    self._cv.wait()
                inbox, self._inbox = list(self._inbox), deque()
                closing = self._closing
            for item in inbox:
                item() if callable(item) else self._accept(item)
            if closing:
                return self._drain()
            self._admit()
            if self._running:
                self._step_safely()

    def _accept(self, job: Job) -> None:
        try:
            job.key = self._b.resolve(job.adapter, job.scale)
            job.tokens = self._b.tokenize(job.prompt)
            max_tokens = job.request.sampling.max_tokens if job.request else 1
            _check_context(len(job.tokens), max_tokens, self._b.context_length)
        except GatewayError as exc:
            return job.fail(exc)
        except Exception as exc:  # noqa: BLE001 - one bad request never stops the loop
            return job.fail(EngineError(f"llama.cpp failed: {exc}"))
        self._waiting.append(job)

    def _drain(self) -> None:
        for job in list(self._waiting) + [s.job for s in self._running]:
            job.fail(EngineError("the engine is shutting down"))
        self._waiting.clear()
        self._running.clear()

    def _admit(self) -> None:
        for job in [j for j in self._waiting if j.cancel.is_set()]:
            self._waiting.remove(job)
        now = time.monotonic()
        waiters = [Waiter(j.key, j.since) for j in self._waiting]
        group = group_to_admit(waiters, self.active, len(self._running), now, SWITCH_PATIENCE_S)
        for job in [j for j in self._waiting if j.key == group]:
            if not self._b.loaded(job.key):
                self._waiting.remove(job)
                job.fail(EngineError("the adapter was unloaded while the request waited"))
                continue
            picked = pick_slot(self._slots, job.tokens, job.key)
            if picked is None:
                return
            self._waiting.remove(job)
            self._start(job, *picked)

    def _start(self, job: Job, slot: Slot, keep: int) -> None:
        try:
            if job.key != self.active:
                self._b.set_adapter(job.key)
                self.active = job.key
            seq = self._sequence(job, slot)
        except GatewayError as exc:
            return job.fail(exc)
        except Exception as exc:  # noqa: BLE001 - one bad request never stops the loop
            return job.fail(EngineError(f"llama.cpp failed: {exc}"))
        self._clock += 1
        slot.busy, slot.used_at = True, self._clock
        if slot.key != job.key:
            keep = 0
        self._lib.llama_memory_seq_rm(self._memory(), slot.id, keep, -1)
        del slot.tokens[keep:]
        slot.key = job.key
        self._running.append(seq)

    def _sequence(self, job: Job, slot: Slot) -> Seq:
        request = job.request
        if request is None:
            return Seq(job, slot)
        matcher = self._b.matcher(request.grammar) if request.grammar else None
        return Seq(
            job,
            slot,
            matcher,
            np.random.default_rng(request.sampling.seed),
            codecs.getincrementaldecoder("utf-8")(errors="replace"),
            StopMatcher(request.sampling.stop),
        )

    def _step_safely(self) -> None:
        try:
            self._step()
        except Exception as exc:  # noqa: BLE001 - a failed step fails its sequences, not the loop
            for seq in list(self._running):
                self._wipe(seq.slot)
                self._release(seq, EngineError(f"llama.cpp failed: {exc}"))

    # -- one step --------------------------------------------------------------------------

    def _step(self) -> None:
        for seq in [s for s in self._running if s.job.cancel.is_set()]:
            self._release(seq)
        if not self._running:
            return
        sampled, fillers = self._fill_batch()
        for row, (seq, _) in enumerate(sampled):
            seq.row = row
        constrained = [(s.matcher, s.row) for s, _ in sampled if s.matcher is not None]
        masks = self._side.submit(self._compute_masks, constrained) if constrained else None
        try:
            status = self._lib.llama_decode(self._b.ctx, self._batch)
        finally:
            for slot in fillers:  # the throwaway tokens leave the idle slots' caches as they were
                self._lib.llama_memory_seq_rm(self._memory(), slot.id, len(slot.tokens), -1)
            if masks is not None:
                masks.result()
        if status != 0:
            raise EngineError(f"llama_decode returned {status}")
        for seq, index in sampled:
            self._after_logits(seq, index)

    def _fill_batch(self) -> tuple[list[tuple[Seq, int]], list[Slot]]:
        """Put this step's tokens in the batch; returns (sequence, batch index of its logits)
        and the idle slots given a throwaway token to close gaps (see GAP_FILL)."""
        self._batch.n_tokens = 0
        decoding = [s for s in self._running if not s.prefilling]
        plan: dict[Seq, list[int]] = {s: [s.next_token] for s in decoding if s.next_token is not None}
        # With company, prompts advance by a bounded chunk per step: a long prompt delays the
        # others' next token (or a short prompt's first) by one chunk, never by its whole prefill.
        alone = len(self._running) == 1
        budget = min(self._n_batch if alone else self._chunk, self._n_batch - len(decoding))
        # Shortest remaining prompt first: short prompts start answering at once, and a long
        # one still advances by whatever budget they leave.
        for seq in sorted((s for s in self._running if s.prefilling), key=_remaining):
            # The last prompt token goes in a step of its own, as it does when the rest of the
            # prompt is cached: the first logits then do not depend on how much was cached, so a
            # seeded answer is the same cold and replayed (the stream / non-stream pair).
            remaining = _remaining(seq)
            take = min(remaining - 1 if remaining > 1 else 1, budget)
            if take <= 0:
                break
            start = len(seq.slot.tokens)
            plan[seq] = seq.job.tokens[start : start + take]
            budget -= take
            self.prefilled += take
        # In slot order, gaps filled: with one KV stream per slot, llama.cpp puts only sequences
        # with consecutive ids in one micro-batch, so any other order, or a gap, splits the
        # step into several passes over the weights.
        by_id: dict[int, Seq | Slot] = {s.slot.id: s for s in plan}
        fillers = self._fillers(sorted(by_id)) if self._split_kv else []
        by_id.update((slot.id, slot) for slot in fillers)
        sampled: list[tuple[Seq, int]] = []
        for _, item in sorted(by_id.items()):
            if isinstance(item, Slot):
                self._add_throwaway(item)
                continue
            seq, prefilling = item, item.prefilling
            for token in plan[seq]:
                index = self._add(
                    seq.slot, token, logits=not prefilling or len(seq.slot.tokens) == len(seq.job.tokens) - 1
                )
            if not prefilling or len(seq.slot.tokens) == len(seq.job.tokens):
                sampled.append((seq, index))
        return sampled, fillers

    def _fillers(self, used: list[int]) -> list[Slot]:
        """The slots in short gaps between the step's slot ids, each with room for a token."""
        fill: list[Slot] = []
        for a, b in zip(used, used[1:], strict=False):
            gap = self._slots[a + 1 : b]
            if len(gap) <= GAP_FILL and all(len(s.tokens) < self._b.context_length for s in gap):
                fill += gap
        return fill

    def _add(self, slot: Slot, token: int, logits: bool) -> int:
        index = self._put(slot, token, logits)
        slot.tokens.append(token)
        return index

    def _add_throwaway(self, slot: Slot) -> None:
        """A token after the slot's cached ones, without logits; removed after the step."""
        self._put(slot, 0, False)

    def _put(self, slot: Slot, token: int, logits: bool) -> int:
        """`token` at the slot's next position in the batch; its index there."""
        b, i = self._batch, self._batch.n_tokens
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, len(slot.tokens), 1, logits
        b.seq_id[i][0] = slot.id
        b.n_tokens = i + 1
        return int(i)

    def _compute_masks(self, constrained: list[tuple[Any, int]]) -> None:
        from llguidance.numpy import fill_next_token_bitmask_par

        fill_next_token_bitmask_par(self._llexec, constrained, self._masks)

    def _after_logits(self, seq: Seq, index: int) -> None:
        ptr = self._lib.llama_get_logits_ith(self._b.ctx, index)
        logits: NDArray[np.float32] = np.ctypeslib.as_array(ptr, shape=(self._b.n_vocab,)).copy()
        if seq.job.probs is not None:
            return self._answer_probe(seq, logits)
        try:
            allowed = self._allowed(seq, seq.row) if seq.matcher is not None else None
            self._advance(seq, logits, allowed)
        except GatewayError as exc:
            self._release(seq, exc)

    def _answer_probe(self, seq: Seq, logits: NDArray[np.float32]) -> None:
        probs = softmax(logits)
        try:
            firsts = [self._b.tokenize(c)[0] for c in seq.job.candidates]
            assert seq.job.probs is not None
            seq.job.probs.set_result([float(probs[t]) for t in firsts])
        except Exception as exc:  # noqa: BLE001 - an empty candidate, say: the caller's error
            assert seq.job.probs is not None
            seq.job.probs.set_exception(exc)
        self._release(seq)

    def _allowed(self, seq: Seq, row: int) -> NDArray[np.intp]:
        if seq.matcher.is_error():
            error = f"grammar failed: {seq.matcher.get_error()}"
            if seq.produced == 0:  # before any token: the request's constraint is too complex
                raise InvalidRequest(
                    f"the constraint is too complex to enforce ({error}); simplify the schema",
                    param="tools",
                    code="constraint_too_complex",
                )
            raise EngineError(error)
        bits = np.unpackbits(self._masks[row].view(np.uint8), count=self._b.n_vocab, bitorder="little")
        allowed: NDArray[np.intp] = np.flatnonzero(bits)
        if len(allowed) == 0:
            raise EngineError("grammar allows no token; this is a constraint compiler bug")
        return allowed

    def _advance(self, seq: Seq, logits: NDArray[np.float32], allowed: NDArray[np.intp] | None) -> None:
        request = seq.job.request
        assert request is not None and seq.rng is not None and seq.stops is not None
        sampling = request.sampling
        token = self._choose(seq, logits, allowed)
        seq.produced += 1
        if self._b.is_eog(token):
            return self._finish(seq, "stop")
        if seq.matcher is not None and not seq.matcher.consume_token(token):
            raise EngineError(f"grammar rejected a masked token: {seq.matcher.get_error()}")
        text, hit = seq.stops.push(seq.decoder.decode(self._b.piece(token)))
        if text:
            seq.job.emit(Piece(text))
        if hit or (seq.matcher is not None and seq.matcher.is_stopped()):
            return self._finish(seq, "stop")
        if seq.produced >= sampling.max_tokens:
            return self._finish(seq, "length")
        seq.next_token = token

    def _choose(self, seq: Seq, logits: NDArray[np.float32], allowed: NDArray[np.intp] | None) -> int:
        """The model's own token where the grammar admits it, else a token from the mask
        (llama.cpp's order). The mask is not all the grammar admits: where one continuation is
        forced, llguidance offers it tokenized alone (`"}}` as `"` `}}`), while a model about
        to write a second call splits it `"}` `},`; sampled from the mask, it closes the list."""
        assert seq.job.request is not None and seq.rng is not None
        sampling = seq.job.request.sampling
        own = sample(logits, sampling.temperature, sampling.top_p, seq.rng)
        if allowed is None or seq.matcher.validate_tokens([own]) == 1:
            return own
        return sample(logits, sampling.temperature, sampling.top_p, seq.rng, allowed)

    def _finish(self, seq: Seq, reason: str) -> None:
        assert seq.stops is not None
        tail = seq.stops.push(seq.decoder.decode(b"", final=True))[0] + seq.stops.flush()
        if not seq.job.cancel.is_set():
            if tail:
                seq.job.emit(Piece(tail, tokens=0))
            seq.job.emit(Finish(reason=reason, prompt_tokens=len(seq.job.tokens), completion_tokens=seq.produced))
        self._release(seq)

    def _release(self, seq: Seq, error: BaseException | None = None) -> None:
        """The sequence leaves the batch; its slot keeps the KV cache for the next prompt."""
        self._running.remove(seq)
        seq.slot.busy = False
        if error is not None:
            seq.job.fail(error)
        elif seq.job.probs is not None and not seq.job.probs.done():
            seq.job.probs.set_exception(EngineError("cancelled"))
        if seq.job.key[0] is not None:
            self._b.reap()  # an adapter unloaded while this sequence ran is freed now

    def _wipe(self, slot: Slot) -> None:
        self._lib.llama_memory_seq_rm(self._memory(), slot.id, 0, -1)
        slot.tokens.clear()
        slot.key = BASE

    def _memory(self) -> Any:
        return self._lib.llama_get_memory(self._b.ctx)


def _remaining(seq: Seq) -> int:
    return len(seq.job.tokens) - len(seq.slot.tokens)


def _check_context(prompt_tokens: int, max_tokens: int, limit: int) -> None:
    if prompt_tokens + max_tokens > limit:
        raise InvalidRequest(
            f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
            f"model's context of {limit} tokens; shorten the conversation or lower max_tokens",
            param="messages",
            code="context_length_exceeded",
        )
