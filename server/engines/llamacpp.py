"""The embedded engine: llama.cpp in-process through llama-cpp-python.

It owns one loaded model and a decode loop (prefill with prefix reuse, grammar mask from
llguidance, numpy sampling, UTF-8-safe detokenization, stop strings). It runs on one worker
thread, so the event loop never blocks; the gateway's admission queue decides who runs next.
GGUF LoRA adapters load once onto the model and are set on the context per request (with a
scale); the reused KV prefix belongs to one (adapter, scale), so switching recomputes it.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import ctypes
import os
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from server.engines.base import (
    AdapterFiles,
    Cancel,
    EngineInfo,
    Event,
    Finish,
    GenerateRequest,
    Piece,
    prompt_spans,
)
from server.engines.sampling import sample, softmax
from server.engines.stops import StopMatcher
from server.errors import EngineError, GatewayError, InvalidRequest, NotFound

Emit = Callable[[Event | BaseException], None]
_MATCHER_CACHE_SIZE = 256
# llguidance's lexer fuel (~50k/ms initial, ~14k/ms per step): bounds what one hostile schema
# (a huge `pattern` repetition) can cost the worker, at a few ms, far above what tools need.
_INITIAL_FUEL = 200_000
_STEP_FUEL = 100_000
# What the context's weights are: (adapter name, scale), or _BASE. A scale of 0 is the base
# model (llama.cpp drops zero-scale adapters from the graph).
AdapterKey = tuple[str | None, float]
_BASE: AdapterKey = (None, 0.0)


class LlamaCppEngine:
    parallelism = 1

    def __init__(self, path: Path, *, context_length: int = 4096, threads: int | None = None):
        import llama_cpp

        self._lib = llama_cpp
        self._llama = llama_cpp.Llama(
            model_path=str(path),
            n_ctx=context_length,
            n_threads=threads or default_threads(),
            n_batch=min(512, context_length),
            logits_all=False,
            verbose=False,
        )
        self._vocab = self._llama._model.vocab
        self._n_vocab = self._llama.n_vocab()
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llamacpp")
        self._grammars: OrderedDict[str, Any] = OrderedDict()
        self._lltokenizer: Any = None
        self._adapters: dict[str, Any] = {}  # name -> llama_adapter_lora pointer
        self._active: AdapterKey = _BASE  # what the context (and its cached prefix) was computed with
        self._info = self._read_info(path)
        self._closed = False

    def info(self) -> EngineInfo:
        return self._info

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event | BaseException] = asyncio.Queue()

        def emit(item: Event | BaseException) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, item)

        work = loop.run_in_executor(self._executor, self._run, request, cancel, emit)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Finish):
                    return
        finally:
            cancel.set()  # a consumer that left early stops the decode loop at the next token
            with contextlib.suppress(BaseException):
                await work

    async def count_tokens(self, text: str) -> int:
        # The vocabulary only: safe beside a running decode (llama-server tokenizes in its HTTP
        # threads too), so a count never waits for a generation. Never on a freed model.
        if self._closed:
            raise EngineError("the llama.cpp engine is closed")
        return len(self._tokenize(text))

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        loop = asyncio.get_running_loop()
        key = _adapter_key(adapter, adapter_scale)
        return await loop.run_in_executor(self._executor, self._probabilities, prompt, candidates, key)

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._load_adapter, adapter)

    async def unload_adapter(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._unload_adapter, name)

    def adapters(self) -> frozenset[str]:
        return frozenset(self._adapters)

    async def close(self) -> None:
        self._closed = True
        self._executor.shutdown(wait=True)
        for name in list(self._adapters):
            self._unload_adapter(name)  # before the model: an adapter lives on its model
        self._llama.close()

    # -- worker thread ---------------------------------------------------------------------

    def _run(self, request: GenerateRequest, cancel: Cancel, emit: Emit) -> None:
        try:
            with self._lock:
                self._use_adapter(_adapter_key(request.adapter, request.adapter_scale))
                self._decode(request, cancel, emit)
        except GatewayError as exc:
            emit(exc)
        except Exception as exc:  # noqa: BLE001 - any engine failure becomes a 502, not a crash
            emit(EngineError(f"llama.cpp failed: {exc}"))

    def _decode(self, request: GenerateRequest, cancel: Cancel, emit: Emit) -> None:
        sampling = request.sampling
        prompt = self._tokenize(request.prompt)
        self._check_context(len(prompt), sampling.max_tokens)
        matcher = self._matcher(request.grammar) if request.grammar else None
        rng = np.random.default_rng(sampling.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopMatcher(sampling.stop)
        logits = self._prefill(prompt)
        produced, reason = 0, "length"
        bitmask = self._bitmask() if matcher is not None else None
        allowed = self._first_allowed(matcher, bitmask) if matcher is not None else None
        while produced < sampling.max_tokens and not cancel.is_set():
            token = sample(logits, sampling.temperature, sampling.top_p, rng, allowed)
            produced += 1
            if self._lib.llama_vocab_is_eog(self._vocab, token):
                reason = "stop"
                break
            if matcher is not None and not matcher.consume_token(token):
                raise EngineError(f"grammar rejected a masked token: {matcher.get_error()}")
            text, hit = stops.push(decoder.decode(self._piece(token)))
            if text:
                emit(Piece(text))
            if hit or (matcher is not None and matcher.is_stopped()):
                reason = "stop"
                break
            if produced < sampling.max_tokens:
                logits, allowed = self._step(token, matcher, bitmask)
        if cancel.is_set():
            return
        tail = stops.push(decoder.decode(b"", final=True))[0] + stops.flush()
        if tail:
            emit(Piece(tail, tokens=0))
        emit(Finish(reason=reason, prompt_tokens=len(prompt), completion_tokens=produced))

    def _step(self, token: int, matcher: Any, bitmask: Any) -> tuple[NDArray[np.float32], Any]:
        # Computing the next mask on a side thread while llama.cpp evaluates was measured
        # slower on small CPUs (it competes with llama.cpp's own threads): sequential it is.
        logits = self._eval([token])
        return logits, (self._allowed(matcher, bitmask) if matcher is not None else None)

    def _probabilities(self, prompt: str, candidates: Sequence[str], adapter: AdapterKey) -> list[float]:
        with self._lock:
            self._use_adapter(adapter)
            tokens = self._tokenize(prompt)
            self._check_context(len(tokens), 1)
            probs = softmax(self._prefill(tokens))
            firsts = [self._tokenize(c)[0] for c in candidates]
            return [float(probs[t]) for t in firsts]

    def _tokenize(self, text: str) -> list[int]:
        # Templates write BOS themselves (transformers semantics): never add another. NFC as
        # Hugging Face tokenizers normalise, so served and trained token ids agree. Client text
        # marked plain never becomes control tokens (engines/base.py: prompt_spans).
        tokens: list[int] = []
        for span, special in prompt_spans(text):
            data = unicodedata.normalize("NFC", span).encode("utf-8")
            tokens += self._llama.tokenize(data, add_bos=False, special=special)
        return tokens

    def _check_context(self, prompt_tokens: int, max_tokens: int) -> None:
        limit = self._info.context_length
        if prompt_tokens + max_tokens > limit:
            raise InvalidRequest(
                f"prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) exceeds the "
                f"model's context of {limit} tokens; shorten the conversation or lower max_tokens",
                param="messages",
                code="context_length_exceeded",
            )

    def _prefill(self, tokens: list[int]) -> NDArray[np.float32]:
        """Evaluate `tokens`, reusing the longest cached prefix (agent loops resend history)."""
        llama = self._llama
        cached = llama.input_ids[: llama.n_tokens]
        keep = 0
        limit = min(len(cached), len(tokens) - 1)  # always re-evaluate the last prompt token
        while keep < limit and cached[keep] == tokens[keep]:
            keep += 1
        llama._ctx.kv_cache_seq_rm(-1, keep, -1)
        llama.n_tokens = keep
        return self._eval(tokens[keep:])

    def _eval(self, tokens: list[int]) -> NDArray[np.float32]:
        self._llama.eval(tokens)
        ptr = self._lib.llama_get_logits_ith(self._llama._ctx.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def _piece(self, token: int) -> bytes:
        piece: bytes = self._llama.detokenize([token], special=True)
        return piece

    # -- adapters --------------------------------------------------------------------------

    def _load_adapter(self, files: AdapterFiles) -> None:
        with self._lock:
            if files.name in self._adapters:
                return
            if files.gguf is None or not files.gguf.is_file():
                raise InvalidRequest(
                    f"adapter {files.name!r} has no GGUF LoRA ({files.gguf}); llama.cpp needs one: "
                    "export it with `python -m training export`", param="model")
            adapter = self._lib.llama_adapter_lora_init(self._llama._model.model, str(files.gguf).encode())
            if not adapter:  # a NULL pointer: llama.cpp logged why (wrong base, not a LoRA GGUF)
                raise EngineError(
                    f"llama.cpp refused the LoRA {files.gguf} for adapter {files.name!r}: not a GGUF LoRA "
                    "or made for another base model")
            self._adapters[files.name] = adapter

    def _unload_adapter(self, name: str) -> None:
        with self._lock:
            adapter = self._adapters.pop(name, None)
            if adapter is None:
                return
            if self._active[0] == name:
                self._use_adapter(_BASE)
            self._lib.llama_adapter_lora_free(adapter)

    def _use_adapter(self, key: AdapterKey) -> None:
        """Set the request's adapter on the context; a change drops the cached prefix."""
        name, scale = key
        if name is not None and name not in self._adapters:
            raise NotFound(f"adapter {name!r} is not loaded on this engine", param="model")
        if name is None or scale == 0.0:
            key = name, scale = _BASE
        if key == self._active:
            return
        lib = self._lib
        if name is None:
            status = lib.llama_set_adapters_lora(self._llama._ctx.ctx, None, 0, None)
        else:
            adapters = (lib.llama_adapter_lora_p_ctypes * 1)(self._adapters[name])
            scales = (ctypes.c_float * 1)(scale)
            status = lib.llama_set_adapters_lora(self._llama._ctx.ctx, adapters, 1, scales)
        if status != 0:
            raise EngineError(f"llama.cpp could not set adapter {name!r} (status {status})")
        # Keys and values cached under other weights must never be reused: _prefill starts over.
        self._llama.n_tokens = 0
        self._active = key

    # -- grammar ---------------------------------------------------------------------------

    def _matcher(self, grammar: str) -> Any:
        import llguidance

        pristine = self._grammars.get(grammar)
        if pristine is None:
            limits = llguidance.LLParserLimits(initial_lexer_fuel=_INITIAL_FUEL, step_lexer_fuel=_STEP_FUEL)
            pristine = llguidance.LLMatcher(self._tokenizer(), grammar, limits=limits)
            if pristine.is_error():
                raise InvalidRequest(f"constraint does not compile: {pristine.get_error()}")
            self._grammars[grammar] = pristine
            if len(self._grammars) > _MATCHER_CACHE_SIZE:
                self._grammars.popitem(last=False)
        self._grammars.move_to_end(grammar)
        return pristine.deep_copy()

    def _tokenizer(self) -> Any:
        if self._lltokenizer is None:
            from llguidance.llamacpp import lltokenizer_from_vocab

            eog = [t for t in (self._llama.token_eos(), self._eot()) if t >= 0]
            self._lltokenizer = lltokenizer_from_vocab(
                self._vocab, n_vocab=self._n_vocab, eos_token=sorted(set(eog))
            )
        return self._lltokenizer

    def _bitmask(self) -> NDArray[np.int32]:
        from llguidance.numpy import allocate_token_bitmask

        return allocate_token_bitmask(1, self._n_vocab)

    def _first_allowed(self, matcher: Any, bitmask: Any) -> NDArray[np.intp]:
        """A grammar that fails before any token is the request's fault (too complex): 400."""
        try:
            return self._allowed(matcher, bitmask)
        except EngineError as exc:
            raise InvalidRequest(
                f"the constraint is too complex to enforce ({exc.message}); simplify the schema",
                param="tools", code="constraint_too_complex") from None

    def _allowed(self, matcher: Any, bitmask: Any) -> NDArray[np.intp]:
        """The token ids the grammar allows next."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(matcher, bitmask, 0)
        if matcher.is_error():
            raise EngineError(f"grammar failed: {matcher.get_error()}")
        bits = np.unpackbits(bitmask.view(np.uint8), count=self._n_vocab, bitorder="little")
        allowed: NDArray[np.intp] = np.flatnonzero(bits)
        if len(allowed) == 0:
            raise EngineError("grammar allows no token; this is a constraint compiler bug")
        return allowed

    def _eot(self) -> int:
        return int(self._lib.llama_vocab_eot(self._vocab))

    # -- metadata --------------------------------------------------------------------------

    def _read_info(self, path: Path) -> EngineInfo:
        meta = self._llama.metadata
        model = self._llama._model
        specials = self._special_tokens()
        return EngineInfo(
            model=meta.get("general.name", path.stem),
            context_length=self._llama.n_ctx(),
            chat_template=meta.get("tokenizer.chat_template"),
            bos_token=_token_text(model, self._llama.token_bos()) if "tokenizer.ggml.bos_token_id" in meta else "",
            eos_token=_token_text(model, self._llama.token_eos()),
            special_tokens=frozenset(text for text, _ in specials),
            special_token_ids=tuple(specials),
        )

    def _special_tokens(self) -> list[tuple[str, int]]:
        control = self._lib.LLAMA_TOKEN_ATTR_CONTROL | self._lib.LLAMA_TOKEN_ATTR_USER_DEFINED
        model = self._llama._model
        return [
            (model.token_get_text(t), t)
            for t in range(self._n_vocab)
            if self._lib.llama_vocab_get_attr(self._vocab, t) & control
        ]


def _adapter_key(name: str | None, scale: float) -> AdapterKey:
    return (None, 0.0) if name is None else (name, float(scale))


def default_threads() -> int:
    """Half the logical cores (about the physical ones), as llama.cpp's own default: more
    threads than cores left free makes llama.cpp's thread barriers spin, and the event loop
    and tokenizer need a core too."""
    return max(1, (os.cpu_count() or 2) // 2)


def _token_text(model: Any, token: int) -> str:
    return str(model.token_get_text(token)) if token >= 0 else ""
