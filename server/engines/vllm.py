"""vLLM as an engine: `vllm serve` over HTTP, the gateway rendering the prompt and owning tool
semantics. Generation is `/v1/completions` with the rendered prompt, the adapter as `model`
and the constraint as `structured_outputs.grammar` (llguidance Lark, which vLLM's `guidance`
backend compiles as is); adapters are pushed with `/v1/load_lora_adapter`; `/metrics` feeds the
router's load figure. Field names follow vLLM's own source (see tests/support/vllm_protocol.py).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any

from server.engines.base import (
    AdapterFiles,
    Cancel,
    EngineInfo,
    Event,
    Finish,
    GenerateRequest,
    Piece,
    prompt_spans,
    unmarked,
)
from server.engines.hf_tokens import PromptTokenizer
from server.engines.remote import (
    Health,
    Upstream,
    UpstreamError,
    first_ready,
    make_client,
    post_json,
    sse_events,
    sync_json,
    upstream_load,
    upstream_path,
)
from server.engines.vocab import Vocab
from server.errors import ConfigError, EngineError, InvalidRequest, UnsupportedFeature

# vLLM's own default cap on `logprobs` (--max-logprobs 20).
_TOP_LOGPROBS = 20
_LOAD_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting")
_FINISH = {"stop": "stop", "length": "length"}
# A grammar that allows one string: an upstream that ignores it (a vLLM older than 0.10.2, which
# read `guided_grammar`, or any server that drops unknown fields) fails open, so it is refused.
PROBE_GRAMMAR = 'start: "ok"'


class VllmEngine:
    def __init__(
        self,
        upstream: Upstream,
        info: EngineInfo,
        path_map: Mapping[str, str] | None = None,
        tokenizer: PromptTokenizer | None = None,
    ):
        self.upstream = upstream
        self.name = upstream.url
        self.model = info.model
        self.parallelism = upstream.slots
        self._info = info
        self._path_map = dict(path_map or {})
        self._tokenizer = tokenizer
        self._client = make_client(upstream.url, upstream.timeouts, upstream.api_key, upstream.slots + 4)

    def info(self) -> EngineInfo:
        return self._info

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        body = {**completion_body(request, self.model), "prompt": await self._prompt(request.prompt)}
        reason, usage, chunks = None, None, 0
        # Closed on the way out, whatever the way: vLLM aborts a request whose connection closes.
        async with aclosing(sse_events(self._client, "/v1/completions", body, self.name)) as events:
            async for event in events:
                if cancel.is_set():
                    return
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    text = choice.get("text") or ""
                    if text:
                        chunks += 1
                        yield Piece(text)
                    if choice.get("finish_reason"):
                        reason = finish_reason(choice["finish_reason"], self.name)
        if reason is None:
            raise UpstreamError("the stream ended without a finish reason", replica=self.name, kind="disconnect")
        prompt_tokens = int(usage.get("prompt_tokens", 0)) if usage else 0
        completion_tokens = int(usage.get("completion_tokens", chunks)) if usage else chunks
        yield Finish(reason, prompt_tokens, completion_tokens)

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        """From the top-20 logprobs of one generated token: a candidate whose first token is
        not among them reads as 0 (it is below the 20th most likely token)."""
        check_scale(adapter, adapter_scale)
        body = probability_body(await self._prompt(prompt), adapter or self.model)
        answer = await post_json(self._client, "/v1/completions", body, self.name)
        try:
            top: dict[str, float] = answer["choices"][0]["logprobs"]["top_logprobs"][0]
        except (KeyError, IndexError, TypeError):
            raise UpstreamError("no top_logprobs in the answer", replica=self.name, kind="protocol") from None
        return [first_token_probability(top, c) for c in candidates]

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        body = {"lora_name": adapter.name, "lora_path": upstream_path(adapter.peft_dir, self._path_map)}
        try:
            await post_json(self._client, "/v1/load_lora_adapter", body, self.name)
        except UpstreamError as exc:
            if "already been loaded" in str(exc):
                return
            raise EngineError(
                f"vLLM did not load adapter {adapter.name!r}: {exc.message} (vLLM needs "
                "--enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
            ) from None

    async def unload_adapter(self, name: str) -> None:
        try:
            await post_json(self._client, "/v1/unload_lora_adapter", {"lora_name": name}, self.name)
        except UpstreamError as exc:
            if exc.kind != "not_found":
                raise

    async def health(self) -> Health:
        try:
            response = await self._client.get("/health")
            if response.status_code == 404:  # an OpenAI-compatible server without vLLM's /health
                response = await self._client.get("/v1/models")
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, never a crash
            return Health(False, detail=repr(exc))
        if response.status_code != 200:
            return Health(False, detail=f"HTTP {response.status_code}")
        return Health(True, load=await self._load())

    async def _load(self) -> float | None:
        try:
            response = await self._client.get("/metrics")
        except Exception:  # noqa: BLE001 - the load figure is optional
            return None
        return upstream_load(response.text, _LOAD_GAUGES) if response.status_code == 200 else None

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self._client.aclose()

    async def _prompt(self, prompt: str) -> str | list[int]:
        """The prompt as text, or where client text spells a special token (vLLM would parse it:
        its tokenizer always does), as token ids in which that text is ordinary tokens."""
        if all(special for _, special in prompt_spans(prompt)):
            return unmarked(prompt)
        if self._tokenizer is None:
            raise EngineError(
                "client text spells a special token and this vLLM engine has no tokenizer to "
                "send it as plain tokens; set engine.tokenizer"
            )
        return await asyncio.to_thread(self._tokenizer.ids, prompt)  # linear, but a prompt can be MBs


def discover(
    upstreams: Sequence[Upstream], vocab: Vocab | None, context_length: int = 4096
) -> tuple[Upstream, EngineInfo]:
    """Wait for the first replica to answer (blocking, start-up); the model's name and context
    length come from its /v1/models, the template and special tokens from the local tokenizer
    folder (vLLM serves neither). Replicas behind one router serve the same model."""
    upstream, models = first_ready(upstreams, "/v1/models")
    card = _model_card(models, upstream)
    vocab = vocab or Vocab(chat_template=None, bos_token="", eos_token="")
    return upstream, EngineInfo(
        model=str(card["id"]),
        context_length=int(card.get("max_model_len") or 0) or context_length,
        chat_template=vocab.chat_template,
        bos_token=vocab.bos_token,
        eos_token=vocab.eos_token,
        special_tokens=frozenset(text for text, _ in vocab.special_token_ids),
        special_token_ids=vocab.special_token_ids,
    )


def completion_body(request: GenerateRequest, model: str) -> dict[str, Any]:
    """The `/v1/completions` request for one generation (fields of vLLM's CompletionRequest)."""
    check_scale(request.adapter, request.adapter_scale)
    s = request.sampling
    body: dict[str, Any] = {
        "model": request.adapter or model,
        "prompt": unmarked(request.prompt),  # VllmEngine sends token ids where client text spells a special token
        "max_tokens": s.max_tokens,
        "temperature": s.temperature,
        "top_p": max(s.top_p, 1e-6),  # vLLM wants 0 < top_p <= 1; a tiny one keeps only the top token
        "stream": True,
        "stream_options": {"include_usage": True},
        "add_special_tokens": False,  # the chat template wrote BOS already
        "skip_special_tokens": False,  # tool-call markers are special tokens: the parser needs them
        "spaces_between_special_tokens": False,
        "include_stop_str_in_output": False,  # as the embedded engine: stop strings and EOS cut, not shown
    }
    if s.seed is not None:
        body["seed"] = s.seed
    if s.stop:
        body["stop"] = list(s.stop)
    if request.grammar is not None:
        body["structured_outputs"] = {"grammar": request.grammar}
    return body


def check_scale(adapter: str | None, scale: float) -> None:
    if adapter is not None and scale != 1.0:
        raise UnsupportedFeature(
            f"vLLM applies LoRA adapters at scale 1; adapter scale {scale:g} cannot be honoured", param="model"
        )


def probability_body(prompt: str | list[int], model: str) -> dict[str, Any]:
    return {
        "model": model,
        "prompt": unmarked(prompt) if isinstance(prompt, str) else prompt,
        "max_tokens": 1,
        "temperature": 0.0,
        "logprobs": _TOP_LOGPROBS,
        "add_special_tokens": False,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }


def first_token_probability(top: Mapping[str, float], candidate: str) -> float:
    """P of the longest top token that starts `candidate` (its first token, as vLLM names it)."""
    matches = [token for token in top if token and candidate.startswith(token)]
    return math.exp(top[max(matches, key=len)]) if matches else 0.0


def finish_reason(reason: str, replica: str) -> str:
    if reason == "abort":
        raise UpstreamError("the request was aborted upstream", replica=replica, kind="status")
    return _FINISH.get(reason, "stop")


def verify_enforces_grammar(upstream: Upstream, model: str) -> None:
    """Refuse an upstream that ignores `structured_outputs`: its grammars would fail open."""
    body = {**completion_body(_probe_request(), model), "stream": False}
    del body["stream_options"]
    try:
        text = str(sync_json(upstream, "POST", "/v1/completions", body)["choices"][0]["text"])
    except (EngineError, InvalidRequest, KeyError, IndexError, TypeError) as exc:
        text = f"an error: {exc}"
    if text != "ok":
        raise ConfigError(
            f"the vLLM server at {upstream.url} does not enforce grammars (asked for a grammar allowing only "
            f"'ok', got {text[:200]!r}); run vLLM >= 0.10.2 with --structured-outputs-config.backend guidance, "
            "or set engine.verify_grammar: false to serve without that guarantee"
        )


def _probe_request() -> GenerateRequest:
    from server.types import Sampling

    return GenerateRequest("Say ok.\n", Sampling(max_tokens=8, temperature=0.0), PROBE_GRAMMAR)


def _model_card(models: Any, upstream: Upstream) -> dict[str, Any]:
    cards = [c for c in (models.get("data") or []) if isinstance(c, dict)] if isinstance(models, dict) else []
    if upstream.model is not None:
        for card in cards:
            if card.get("id") == upstream.model:
                return card
        return {"id": upstream.model}
    base = [c for c in cards if not c.get("parent")]  # LoRA cards name their base as parent
    if not base:
        raise ConfigError(f"the vLLM server at {upstream.url} lists no model in /v1/models")
    return base[0]
