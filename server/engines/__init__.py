"""Engines: one small Protocol (base.py); implementations are imported only when chosen."""

from __future__ import annotations

from server.config import Settings
from server.engines.base import Engine


def make_engine(settings: Settings) -> Engine:
    from server.engines.llamacpp import LlamaCppEngine

    model = settings.model
    assert model.path is not None  # resolved by server.serving before engines are made
    return LlamaCppEngine(model.path, context_length=model.context_length, threads=model.threads)
