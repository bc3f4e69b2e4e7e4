"""Engines: one small Protocol (base.py); implementations are imported only when chosen.

`engine.kind` picks one: llama.cpp in this process (the default), or upstream servers (vLLM,
llama-server) as replicas behind the router, which is itself an Engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from server.config import Settings
from server.engines.base import Engine

if TYPE_CHECKING:
    from collections.abc import Sequence

    from server.engines.remote import Upstream
    from server.engines.router import Replica
    from server.metrics import Metrics


def make_engine(settings: Settings, metrics: Metrics | None = None) -> Engine:
    kind = settings.engine.kind
    if kind == "vllm":
        return _vllm(settings, metrics)
    if kind == "llama-server":
        return _llama_server(settings, metrics)
    from server.engines.llamacpp import LlamaCppEngine

    model = settings.model
    assert model.path is not None  # resolved by server.serving.build before engines are made
    return LlamaCppEngine(
        model.path,
        context_length=model.context_length,
        threads=model.threads,
        slots=model.slots,
        kv_unified=model.kv_unified,
    )


def _vllm(settings: Settings, metrics: Metrics | None) -> Engine:
    from server.engines import vllm
    from server.engines.hf_tokens import PromptTokenizer
    from server.engines.vocab import read_tokenizer_dir

    section = settings.engine
    upstreams = _upstreams(settings)
    vocab = read_tokenizer_dir(section.tokenizer) if section.tokenizer else None
    # Client text spelling a special token goes to vLLM as ids from the model's own tokenizer.
    tokenizer = PromptTokenizer(section.tokenizer / "tokenizer.json") if section.tokenizer else None
    first, info = vllm.discover(upstreams, vocab, settings.model.context_length)
    if section.verify_grammar:
        vllm.verify_enforces_grammar(first, info.model)
    replicas = [vllm.VllmEngine(u, info, section.path_map, tokenizer) for u in upstreams]
    return _router(settings, replicas, metrics)


def _llama_server(settings: Settings, metrics: Metrics | None) -> Engine:
    from server.engines import llamaserver

    upstreams = _upstreams(settings)
    first, info, facts = llamaserver.discover(upstreams)
    if settings.engine.verify_grammar:
        llamaserver.verify_enforces_grammar(first)
    replicas = [llamaserver.LlamaServerEngine(u, info, facts, settings.engine.path_map) for u in upstreams]
    return _router(settings, replicas, metrics)


def _upstreams(settings: Settings) -> list[Upstream]:
    from server.engines.remote import Timeouts, Upstream

    s = settings.engine
    key = s.api_key.get_secret_value() if s.api_key else None
    timeouts = Timeouts(connect_s=s.connect_timeout_s, read_s=s.read_timeout_s)
    return [
        Upstream(url.rstrip("/"), s.upstream_model, timeouts, key, s.slots_per_replica, s.startup_timeout_s)
        for url in s.urls
    ]


def _router(settings: Settings, replicas: Sequence[Replica], metrics: Metrics | None) -> Engine:
    from server.engines.router import Router, RouterPolicy

    s = settings.engine
    policy = RouterPolicy(s.health_interval_s, s.breaker_failures, s.breaker_open_s, s.retries)
    return Router(replicas, policy, metrics)
