"""The embedded engine: llama.cpp in-process through llama-cpp-python's low-level API.

It owns one loaded model and one llama.cpp context with N sequence slots, each with its own
KV cache of `context_length` tokens. The decode loop (server/engines/batching.py) batches
every running request into each llama.cpp step (continuous batching) with a grammar mask
from llguidance per sequence; this module loads the model, tokenizes, compiles grammars and
holds the GGUF LoRA adapters, which load once onto the model and are set on the context per
adapter group (sequences in one batch share the context's adapter and scale).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import os
import unicodedata
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.bytecache import ByteLRU
from server.engines.base import AdapterFiles, Cancel, EngineInfo, Event, Finish, GenerateRequest, prompt_spans
from server.engines.batching import Job, Scheduler
from server.engines.slots import BASE, AdapterKey
from server.errors import EngineError, InvalidRequest, NotFound

_MATCHER_CACHE_SIZE = 256
# llguidance's lexer fuel (~50k/ms initial, ~14k/ms per step): bounds what one hostile schema
# (a huge `pattern` repetition) can cost the worker, at a few ms, far above what tools need.
_INITIAL_FUEL = 200_000
_STEP_FUEL = 100_000
# The KV cache the default slot count aims at, in tokens over all slots (see default_slots).
_DEFAULT_KV_TOKENS = 16_384
_MAX_DEFAULT_SLOTS = 8
# Prompt tokens evaluated per step while other sequences are decoding (chunked prefill).
PREFILL_CHUNK = 128
_N_BATCH = 512


@dataclass(frozen=True)
class _Adapter:
    uid: int  # the slot caches' key: a reload under the same name is other weights
    pointer: Any


class LlamaCppEngine:
    def __init__(
        self,
        path: Path,
        *,
        context_length: int = 4096,
        threads: int | None = None,
        slots: int | None = None,
        kv_unified: bool = False,
    ):
        import llama_cpp
        from llama_cpp import _internals

        self.lib = llama_cpp
        self.parallelism = slots or default_slots(context_length)
        self.context_length = context_length
        self.kv_unified = kv_unified
        with contextlib.suppress(ImportError, AttributeError):
            from llama_cpp._logger import set_verbose

            set_verbose(False)
        self._model = _internals.LlamaModel(
            path_model=str(path), params=llama_cpp.llama_model_default_params(), verbose=False
        )
        self._context = _internals.LlamaContext(
            model=self._model, params=self._context_params(threads or default_threads()), verbose=False
        )
        self.ctx = self._context.ctx
        self._vocab = self._model.vocab
        self.n_vocab = self._model.n_vocab()
        self._grammars: ByteLRU[str, Any] = ByteLRU(_MATCHER_CACHE_SIZE)  # compiled matchers, by grammar
        self._lltokenizer: Any = None
        self._adapters: dict[str, _Adapter] = {}
        self._uids = itertools.count(1)
        self._doomed: list[_Adapter] = []  # unloaded while a running sequence still uses them
        self._info = self._read_info(path)
        self._closed = False
        self._scheduler = Scheduler(self, self.parallelism, _N_BATCH, PREFILL_CHUNK, split_kv=not kv_unified)

    def _context_params(self, threads: int) -> Any:
        params = self.lib.llama_context_default_params()
        params.n_ctx = self.context_length * self.parallelism
        params.n_seq_max = self.parallelism
        # Split (the default): one KV stream per slot, a sequence's sums read only its own cells
        # (the loop closes gaps between busy slots, see batching.GAP_FILL). Unified: one buffer,
        # the same tokens/s and sooner first tokens under many prefills (docs/benchmarks.md),
        # but attention runs over every cell, masked, at places that depend on history. Each
        # slot holds at most context_length tokens, so slots x context_length cells suffice.
        params.kv_unified = self.kv_unified
        params.n_batch = params.n_ubatch = _N_BATCH
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        return params

    def info(self) -> EngineInfo:
        return self._info

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens llama.cpp evaluated since start (what prefix reuse saves shows here)."""
        return self._scheduler.prefilled

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()

        def emit(item: Event | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        job = Job(request.prompt, request.adapter, request.adapter_scale, cancel, emit, request=request)
        self._scheduler.submit(job)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            cancel.set()  # a consumer that left early: the loop drops the sequence at its next step

    async def count_tokens(self, text: str) -> int:
        # The vocabulary only: safe beside a running decode (llama-server tokenizes in its HTTP
        # threads too), so a count never waits for a generation. Never on a freed model.
        if self._closed:
            raise EngineError("the llama.cpp engine is closed")
        return len(self.tokenize(text))

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        from concurrent.futures import Future

        probs: Future[list[float]] = Future()
        cancel = Cancel()
        job = Job(prompt, adapter, adapter_scale, cancel, lambda _: None, candidates=candidates, probs=probs)
        self._scheduler.submit(job)
        try:
            return await asyncio.wrap_future(probs)
        finally:
            cancel.set()

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        await asyncio.wrap_future(self._scheduler.call(lambda: self._load_adapter(adapter)))

    async def unload_adapter(self, name: str) -> None:
        await asyncio.wrap_future(self._scheduler.call(lambda: self._unload_adapter(name)))

    def adapters(self) -> frozenset[str]:
        return frozenset(self._adapters)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._scheduler.close)
        for adapter in list(self._adapters.values()) + self._doomed:
            self.lib.llama_adapter_lora_free(adapter.pointer)  # before the model: it lives on it
        self._adapters.clear()
        self._doomed.clear()
        self._context.close()  # type: ignore[no-untyped-call]
        self._model.close()  # type: ignore[no-untyped-call]

    # -- the Backend the decode loop uses (its thread only) --------------------------------

    def tokenize(self, text: str) -> list[int]:
        # Templates write BOS themselves (transformers semantics): never add another. NFC as
        # Hugging Face tokenizers normalise, so served and trained token ids agree. Client text
        # marked plain never becomes control tokens (engines/base.py: prompt_spans).
        tokens: list[int] = []
        for span, special in prompt_spans(text):
            data = unicodedata.normalize("NFC", span).encode("utf-8")
            tokens += self._model.tokenize(data, add_bos=False, special=special)
        return tokens

    def piece(self, token: int) -> bytes:
        piece: bytes = self._model.detokenize([token], special=True)
        return piece

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self._vocab, token))

    def resolve(self, adapter: str | None, scale: float) -> AdapterKey:
        """The weights a request names; a scale of 0 is the base model (llama.cpp drops
        zero-scale adapters from the graph)."""
        if adapter is None:
            return BASE
        loaded = self._adapters.get(adapter)
        if loaded is None:
            raise NotFound(f"adapter {adapter!r} is not loaded on this engine", param="model")
        return BASE if scale == 0.0 else (loaded.uid, float(scale))

    def loaded(self, key: AdapterKey) -> bool:
        return key[0] is None or any(a.uid == key[0] for a in self._adapters.values())

    def set_adapter(self, key: AdapterKey) -> None:
        """Set the context's adapter; the slots' caches stay valid, each keyed by its weights."""
        uid, scale = key
        lib = self.lib
        if uid is None:
            status = lib.llama_set_adapters_lora(self.ctx, None, 0, None)
        else:
            pointer = next(a.pointer for a in self._adapters.values() if a.uid == uid)
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(pointer)
            scales = (ctypes.c_float * 1)(scale)
            status = lib.llama_set_adapters_lora(self.ctx, adapters, 1, scales)
        if status != 0:
            raise EngineError(f"llama.cpp could not set the adapter (status {status})")

    # -- adapters (loop thread) ------------------------------------------------------------

    def _load_adapter(self, files: AdapterFiles) -> None:
        if files.name in self._adapters:
            return
        if files.gguf is None or not files.gguf.is_file():
            raise InvalidRequest(
                f"adapter {files.name!r} has no GGUF LoRA ({files.gguf}); llama.cpp needs one: "
                "export it with `python -m training export`",
                param="model",
            )
        pointer = self.lib.llama_adapter_lora_init(self._model.model, str(files.gguf).encode())
        if not pointer:  # a NULL pointer: llama.cpp logged why (wrong base, not a LoRA GGUF)
            raise EngineError(
                f"llama.cpp refused the LoRA {files.gguf} for adapter {files.name!r}: not a GGUF LoRA "
                "or made for another base model"
            )
        self._adapters[files.name] = _Adapter(next(self._uids), pointer)

    def _unload_adapter(self, name: str) -> None:
        """New requests naming it fail at once; its memory is freed when no sequence uses it."""
        adapter = self._adapters.pop(name, None)
        if adapter is not None:
            self._doomed.append(adapter)
            self._scheduler.forget(adapter.uid)
            self.reap()

    def reap(self) -> None:
        """Free unloaded adapters no running sequence uses (the context back on the base)."""
        for adapter in list(self._doomed):
            if self._scheduler.running_with(adapter.uid):
                continue
            if self._scheduler.active[0] == adapter.uid:
                self.set_adapter(BASE)
                self._scheduler.active = BASE
            self._doomed.remove(adapter)
            self.lib.llama_adapter_lora_free(adapter.pointer)

    # -- grammar ---------------------------------------------------------------------------

    def matcher(self, grammar: str) -> Any:
        import llguidance

        pristine = self._grammars.get(grammar)
        if pristine is None:
            limits = llguidance.LLParserLimits(initial_lexer_fuel=_INITIAL_FUEL, step_lexer_fuel=_STEP_FUEL)
            pristine = llguidance.LLMatcher(self._tokenizer(), grammar, limits=limits)
            if pristine.is_error():
                raise InvalidRequest(f"constraint does not compile: {pristine.get_error()}")
            self._grammars.put(grammar, pristine)
        return pristine.deep_copy()

    def _tokenizer(self) -> Any:
        if self._lltokenizer is None:
            from llguidance.llamacpp import lltokenizer_from_vocab

            eog = [t for t in (self._model.token_eos(), self._eot()) if t >= 0]
            self._lltokenizer = lltokenizer_from_vocab(self._vocab, n_vocab=self.n_vocab, eos_token=sorted(set(eog)))
        return self._lltokenizer

    def _eot(self) -> int:
        return int(self.lib.llama_vocab_eot(self._vocab))

    # -- metadata --------------------------------------------------------------------------

    def _read_info(self, path: Path) -> EngineInfo:
        meta = self._model.metadata()
        model = self._model
        specials = self._special_tokens()
        return EngineInfo(
            model=meta.get("general.name", path.stem),
            context_length=self.context_length,
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=_token_text(model, self._model.token_bos()) if "tokenizer.ggml.bos_token_id" in meta else "",
            eos_token=_token_text(model, self._model.token_eos()),
            special_tokens=frozenset(text for text, _ in specials),
            special_token_ids=tuple(specials),
        )

    def _special_tokens(self) -> list[tuple[str, int]]:
        control = self.lib.LLAMA_TOKEN_ATTR_CONTROL | self.lib.LLAMA_TOKEN_ATTR_USER_DEFINED
        model = self._model
        return [
            (model.token_get_text(t), t)
            for t in range(self.n_vocab)
            if self.lib.llama_vocab_get_attr(self._vocab, t) & control
        ]


def default_slots(context_length: int) -> int:
    """Slots from the context: each slot holds a full `context_length` KV cache, so the
    default keeps all of them near _DEFAULT_KV_TOKENS (4 slots at 4096, 8 at 2048 or less)."""
    return max(1, min(_MAX_DEFAULT_SLOTS, _DEFAULT_KV_TOKENS // context_length))


def default_threads() -> int:
    """Half the logical cores (about the physical ones), as llama.cpp's own default: more
    threads than cores left free makes llama.cpp's thread barriers spin, and the event loop
    and tokenizer need a core too."""
    return max(1, (os.cpu_count() or 2) // 2)


def _token_text(model: Any, token: int) -> str:
    return str(model.token_get_text(token)) if token >= 0 else ""
