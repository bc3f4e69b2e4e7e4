"""llama.cpp's own C++ server (llama-server) as a remote engine: one CPU box serving many
requests in parallel (`--parallel N` slots, continuous batching). Generation is `/completion`
with the rendered prompt and the constraint in GBNF (lazy, with the call opener as trigger, in
`auto`); adapters are the server's own `--lora` files, chosen per request with `lora: [{id,
scale}]`. What the gateway must know of the model (template, context, special tokens) comes
from `/props` and `/tokenize`. Field names follow tools/server of the vendored llama.cpp.
"""

from __future__ import annotations

import math
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

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
from server.engines.remote import (
    Health,
    Upstream,
    UpstreamError,
    first_ready,
    make_client,
    post_json,
    sse_events,
    status_error,
    sync_json,
    transport_error,
    upstream_load,
    upstream_path,
)
from server.errors import ConfigError, EngineError, InvalidRequest
from server.types import Sampling

# common_grammar_trigger_type is TOKEN, WORD, PATTERN, PATTERN_FULL. A WORD that is one token
# becomes a TOKEN trigger, which misses the same text spelled with other tokens; a PATTERN is
# searched in the text, special tokens' text included, so it catches both.
_PATTERN_TRIGGER = 2
_REGEX_SPECIALS = re.compile(r"[.^$|()*+?\[\]{}\\]")
_TOP_PROBS = 100
_LOAD_GAUGES = ("llamacpp:requests_processing", "llamacpp:requests_deferred")  # with --metrics
_FINISH = {"eos": "stop", "word": "stop", "limit": "length"}
# Texts in a chat template that may be special tokens: <...>, <|...|>, [TOOL_CALLS]-like.
_CANDIDATES = re.compile(r"<[^<>\s]{1,64}>|\[[A-Z_/]{2,40}\]")
PROBE_GRAMMAR = 'root ::= "ok"'


@dataclass(frozen=True)
class ServerFacts:
    """What a llama-server said about itself at start-up (replicas are assumed alike)."""

    add_bos: bool  # the server puts BOS before a string prompt itself
    loras: tuple[tuple[str, int], ...] = ()  # (path as the server loaded it, id) of its --lora files
    specials: Mapping[str, int] = field(default_factory=dict)


class LlamaServerEngine:
    def __init__(
        self, upstream: Upstream, info: EngineInfo, facts: ServerFacts, path_map: Mapping[str, str] | None = None
    ):
        self.upstream = upstream
        self.name = upstream.url
        self.parallelism = upstream.slots
        self._info = info
        self._facts = facts
        self._path_map = dict(path_map or {})
        self._adapters: dict[str, int] = {}
        self._special_by_id = {i: t for t, i in facts.specials.items()}
        self._first_ids: dict[str, int | None] = {}
        self._plain: dict[str, list[int]] = {}
        self._client = make_client(upstream.url, upstream.timeouts, upstream.api_key, upstream.slots + 4)

    def info(self) -> EngineInfo:
        return self._info

    async def generate(self, request: GenerateRequest, cancel: Cancel) -> AsyncIterator[Event]:
        body = self.completion_body(request)
        body["prompt"] = await self._tokenized_prompt(request.prompt)
        # Closed on the way out, whatever the way: the connection (and the server's slot) is freed at once.
        async with aclosing(sse_events(self._client, "/completion", body, self.name)) as events:
            async for event in self._events(events, cancel):
                yield event

    async def _events(self, events: AsyncIterator[dict[str, Any]], cancel: Cancel) -> AsyncIterator[Event]:
        held: Piece | None = None  # a special token's text, dropped if it turns out to be the EOS
        async for event in events:
            if cancel.is_set():
                return  # leaving the stream closes the connection: the server frees the slot
            if event.get("stop"):
                if held is not None and event.get("stop_type") != "eos":
                    yield held
                yield Finish(
                    _finish(event), int(event.get("tokens_evaluated", 0)), int(event.get("tokens_predicted", 0))
                )
                return
            if held is not None:
                yield held
                held = None
            text = str(event.get("content", ""))
            tokens = event.get("tokens") or []
            if text and len(tokens) == 1 and text == self._special_text(tokens[0]):
                held = Piece(text)
            elif text:
                yield Piece(text, tokens=max(1, len(tokens)))
        raise UpstreamError("the stream ended without its final event", replica=self.name, kind="disconnect")

    def completion_body(self, request: GenerateRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "prompt": unmarked(self._prompt(request.prompt)),  # generate() sends client text as plain
            "n_predict": s.max_tokens,
            "temperature": s.temperature,
            "top_p": s.top_p,
            # Neutral values for the samplers the gateway's own engine does not have.
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "seed": s.seed if s.seed is not None else -1,
            "stop": list(s.stop),
            "stream": True,
            "cache_prompt": True,
            # Special tokens are sent as text only when preserved: tool-call markers must be.
            "preserved_tokens": sorted(self._facts.specials),
        }
        body.update(self._grammar(request))
        if self._facts.loras:
            body["lora"] = self._lora(request)
        return body

    async def token_probabilities(
        self, prompt: str, candidates: Sequence[str], adapter: str | None = None, adapter_scale: float = 1.0
    ) -> list[float]:
        """Exact for the candidates' first tokens among the top 100; below them, 0."""
        body: dict[str, Any] = {
            "prompt": await self._tokenized_prompt(prompt),
            "n_predict": 1,
            "n_probs": _TOP_PROBS,
            "temperature": 0.0,
            "cache_prompt": True,
        }
        if self._facts.loras:
            body["lora"] = self._lora(
                GenerateRequest(prompt, Sampling(max_tokens=1), adapter=adapter, adapter_scale=adapter_scale)
            )
        answer = await post_json(self._client, "/completion", body, self.name)
        try:
            top = {int(t["id"]): float(t["logprob"]) for t in answer["completion_probabilities"][0]["top_logprobs"]}
        except (KeyError, IndexError, TypeError, ValueError):
            raise UpstreamError(
                "no completion_probabilities in the answer", replica=self.name, kind="protocol"
            ) from None
        firsts = [await self._first_id(c) for c in candidates]
        return [math.exp(top[t]) if t is not None and t in top else 0.0 for t in firsts]

    async def load_adapter(self, adapter: AdapterFiles) -> None:
        """llama-server cannot load adapters at run time: the adapter's GGUF must be one of the
        server's --lora files (matched by path, else by file name)."""
        if adapter.gguf is None:
            raise EngineError(f"adapter {adapter.name!r} has no GGUF LoRA, which llama-server needs")
        wanted = upstream_path(adapter.gguf, self._path_map)
        served = await self._served_loras()
        if served != self._facts.loras:  # ids are positions in the first replica's list
            raise EngineError(
                f"this llama-server replica serves the LoRAs {[p for p, _ in served]}, the first one "
                f"{[p for p, _ in self._facts.loras]}: start every replica with the same --lora files "
                "in the same order"
            )
        for path, lora_id in self._facts.loras:
            if path == wanted or Path(path).name == adapter.gguf.name:
                self._adapters[adapter.name] = lora_id
                return
        loaded = ", ".join(p for p, _ in self._facts.loras) or "none"
        raise EngineError(
            f"a llama-server replica was not started with this adapter's LoRA "
            f"({wanted}; it has: {loaded}); add --lora {wanted} --lora-init-without-apply"
        )

    async def _served_loras(self) -> tuple[tuple[str, int], ...]:
        try:
            response = await self._client.get("/lora-adapters")
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name) from None
        if response.status_code != 200:
            raise status_error(response.status_code, response.text, self.name)
        return tuple((str(a["path"]), int(a["id"])) for a in response.json())

    async def unload_adapter(self, name: str) -> None:
        self._adapters.pop(name, None)  # the file stays in the server; requests can no longer name it

    async def health(self) -> Health:
        try:
            response = await self._client.get("/health")
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy, never a crash
            return Health(False, detail=repr(exc))
        if response.status_code != 200:
            return Health(False, detail=f"HTTP {response.status_code}")
        try:
            metrics = await self._client.get("/metrics")
        except Exception:  # noqa: BLE001 - the load figure is optional
            return Health(True)
        return Health(True, load=upstream_load(metrics.text, _LOAD_GAUGES) if metrics.status_code == 200 else None)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await self._client.aclose()

    # -- helpers ---------------------------------------------------------------------------

    def _prompt(self, prompt: str) -> str:
        bos = self._info.bos_token
        if self._facts.add_bos and bos and prompt.startswith(bos):
            return prompt[len(bos) :]  # the server adds it back: exactly one BOS, as the template meant
        return prompt

    async def _tokenized_prompt(self, prompt: str) -> str | list[str | int]:
        """A string (the server parses its special tokens), or where client text spells a
        special token, a mixed list in which that text is ids tokenized without parsing them."""
        spans = list(prompt_spans(self._prompt(prompt)))
        if all(special for _, special in spans):
            return "".join(text for text, _ in spans)
        mixed: list[str | int] = []
        for text, special in spans:
            mixed += [text] if special else await self._plain_ids(text)
        return mixed

    async def _plain_ids(self, text: str) -> list[int]:
        if text not in self._plain:  # only spelled special tokens come here: a small, fixed set
            answer = await post_json(self._client, "/tokenize", {"content": text, "parse_special": False}, self.name)
            self._plain[text] = [int(t) for t in answer.get("tokens") or []]
        return self._plain[text]

    def _grammar(self, request: GenerateRequest) -> dict[str, Any]:
        if request.gbnf is None:
            if request.grammar is not None:
                raise EngineError("llama-server enforces GBNF grammars and none came with this request")
            return {}
        out: dict[str, Any] = {"grammar": request.gbnf.text}
        if request.gbnf.triggers:
            out["grammar_lazy"] = True
            out["grammar_triggers"] = [
                {"type": _PATTERN_TRIGGER, "value": _REGEX_SPECIALS.sub(r"\\\g<0>", t)} for t in request.gbnf.triggers
            ]
        return out

    def _lora(self, request: GenerateRequest) -> list[dict[str, Any]]:
        """Every loaded LoRA at scale 0 but the request's: an empty list would mean the
        server's global scales (1 unless started with --lora-init-without-apply)."""
        chosen = None
        if request.adapter is not None:
            chosen = self._adapters.get(request.adapter)
            if chosen is None:
                raise InvalidRequest(f"adapter {request.adapter!r} is not loaded on this engine", param="model")
        return [{"id": i, "scale": request.adapter_scale if i == chosen else 0.0} for _, i in self._facts.loras]

    def _special_text(self, token: Any) -> str | None:
        return self._special_by_id.get(token) if isinstance(token, int) else None

    async def _first_id(self, text: str) -> int | None:
        if text not in self._first_ids:
            answer = await post_json(self._client, "/tokenize", {"content": text, "parse_special": True}, self.name)
            tokens = answer.get("tokens") or [None]
            self._first_ids[text] = tokens[0]
        return self._first_ids[text]


def discover(upstreams: Sequence[Upstream]) -> tuple[Upstream, EngineInfo, ServerFacts]:
    """Wait for the first replica to answer /props (blocking, start-up) and read the model's
    template, context (per slot), BOS / EOS and special tokens (probed with /tokenize: a text
    that is one token only when special tokens are parsed)."""
    upstream, props = first_ready(upstreams, "/props")
    template = props.get("chat_template") or None
    candidates = set(_CANDIDATES.findall(template or "")) | {props.get("bos_token", ""), props.get("eos_token", "")}
    probed = {text: _special_id(upstream, text) for text in sorted(c for c in candidates if c)}
    specials = {text: i for text, i in probed.items() if i is not None}
    add_bos = bool(sync_json(upstream, "POST", "/tokenize", {"content": "", "add_special": True}).get("tokens"))
    bos = str(props.get("bos_token", ""))
    info = EngineInfo(
        model=_model_name(str(props.get("model_alias") or props.get("model_path") or "llama-server")),
        context_length=int(props.get("default_generation_settings", {}).get("n_ctx", 0)) or 4096,
        chat_template=template,
        bos_token=bos if bos in specials else "",
        eos_token=str(props.get("eos_token", "")),
        special_tokens=frozenset(specials),
        special_token_ids=tuple(sorted(specials.items(), key=lambda kv: kv[1])),
        grammar_syntax="gbnf",
    )
    loras = sync_json(upstream, "GET", "/lora-adapters")
    facts = ServerFacts(add_bos, tuple((str(a["path"]), int(a["id"])) for a in loras), specials)
    return upstream, info, facts


def verify_enforces_grammar(engine_upstream: Upstream) -> None:
    """Refuse a server that does not apply `grammar` (it would fail open)."""
    body = {"prompt": "Say ok.\n", "n_predict": 8, "temperature": 0.0, "grammar": PROBE_GRAMMAR}
    try:
        text = str(sync_json(engine_upstream, "POST", "/completion", body).get("content"))
    except (EngineError, InvalidRequest) as exc:
        text = f"an error: {exc}"
    if text != "ok":
        raise ConfigError(
            f"the llama-server at {engine_upstream.url} does not enforce grammars (asked for 'ok', "
            f"got {text[:200]!r}); set engine.verify_grammar: false to serve without that guarantee"
        )


def _special_id(upstream: Upstream, text: str) -> int | None:
    parsed = sync_json(upstream, "POST", "/tokenize", {"content": text, "parse_special": True}).get("tokens") or []
    if len(parsed) != 1:
        return None
    plain = sync_json(upstream, "POST", "/tokenize", {"content": text, "parse_special": False}).get("tokens") or []
    return int(parsed[0]) if len(plain) > 1 else None


def _model_name(alias: str) -> str:
    """--alias, else the model file as the gateway names local files (models/<name>/model.gguf)."""
    if "/" not in alias and not alias.endswith(".gguf"):
        return alias
    path = Path(alias)
    return path.parent.name if path.stem == "model" and path.parent.name else path.stem


def _finish(event: Mapping[str, Any]) -> str:
    if event.get("truncated"):
        return "length"
    return _FINISH.get(str(event.get("stop_type")), "stop")
