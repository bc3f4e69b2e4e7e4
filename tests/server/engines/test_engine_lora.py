"""GGUF LoRA adapters in the llama.cpp engine: several on one loaded base, chosen per request.

Real llama.cpp, the tiny model and two converted adapters with random non-zero weights. The
switching test is the one that guards the prefix-reuse KV cache: every request repeats the same
prompt, so a cache reused across adapters would answer with the previous adapter's keys.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peft import LoraConfig

from server.engines.base import AdapterFiles, Cancel, Finish, GenerateRequest, Piece
from server.engines.llamacpp import LlamaCppEngine
from server.errors import EngineError, InvalidRequest, NotFound
from server.types import Sampling
from tests.support.lora_helpers import ALL_LINEAR, PEFT_WARNINGS, make_peft_adapter
from training.demo.tiny import TinyModel
from training.export.gguf_lora import convert_lora

pytestmark = PEFT_WARNINGS

PROMPT = "<|im_start|>user\nWhere is order 12345?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = Sampling(max_tokens=24, temperature=0.0)
SEEDED = Sampling(max_tokens=24, temperature=1.0, seed=7)
CONTEXT = 512


@dataclass(frozen=True)
class Adapters:
    a: AdapterFiles
    b: AdapterFiles


@pytest.fixture(scope="module")
def adapters(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    root = tmp_path_factory.mktemp("engine_lora")
    files = []
    for name, seed, rank in (("a", 1, 8), ("b", 2, 16)):
        peft_dir = make_peft_adapter(
            tiny_model, LoraConfig(r=rank, lora_alpha=16, target_modules=ALL_LINEAR), root / name, seed
        )
        gguf = convert_lora(peft_dir, tiny_model.hf_dir, peft_dir / "adapter.gguf").path
        files.append(AdapterFiles(name=name, peft_dir=peft_dir, gguf=gguf))
    return Adapters(*files)


def _engine(tiny: TinyModel) -> LlamaCppEngine:
    return LlamaCppEngine(tiny.gguf, context_length=CONTEXT, threads=2)


@pytest.fixture()
async def engine(tiny_model: TinyModel, adapters: Adapters) -> AsyncIterator[LlamaCppEngine]:
    engine = _engine(tiny_model)
    await engine.load_adapter(adapters.a)
    await engine.load_adapter(adapters.b)
    yield engine
    await engine.close()


async def generate(
    engine: LlamaCppEngine, adapter: str | None, sampling: Sampling = GREEDY, scale: float = 1.0
) -> tuple[str, Finish]:
    request = GenerateRequest(PROMPT, sampling, adapter=adapter, adapter_scale=scale)
    text, finish = [], None
    async for event in engine.generate(request, Cancel()):
        if isinstance(event, Piece):
            text.append(event.text)
        else:
            finish = event
    assert finish is not None
    return "".join(text), finish


async def fresh(tiny: TinyModel, files: AdapterFiles | None, runs: list[tuple[Sampling, float]]) -> list[str]:
    """What a new engine holding only `files` answers: the reference for switching."""
    engine = _engine(tiny)
    try:
        if files is not None:
            await engine.load_adapter(files)
        name = files.name if files is not None else None
        return [(await generate(engine, name, sampling, scale))[0] for sampling, scale in runs]
    finally:
        await engine.close()


async def test_adapter_changes_the_output(engine: LlamaCppEngine) -> None:
    base, _ = await generate(engine, None)
    with_a, _ = await generate(engine, "a")
    with_b, _ = await generate(engine, "b")
    assert len({base, with_a, with_b}) == 3
    [p_base] = await engine.token_probabilities(PROMPT, ["<tool_call>"])
    [p_a] = await engine.token_probabilities(PROMPT, ["<tool_call>"], "a")
    assert abs(p_base - p_a) > 1e-6
    # At scale 0 the adapter is off: the no-tool decision of a scaled adapter reads its own scale.
    [p_off] = await engine.token_probabilities(PROMPT, ["<tool_call>"], "a", 0.0)
    assert p_off == pytest.approx(p_base, abs=1e-6)


async def test_switching_back_and_forth_matches_a_fresh_engine(
    engine: LlamaCppEngine, tiny_model: TinyModel, adapters: Adapters
) -> None:
    order: list[tuple[str | None, Sampling, float]] = [
        ("a", GREEDY, 1.0),
        (None, GREEDY, 1.0),
        ("b", GREEDY, 1.0),
        ("a", GREEDY, 1.0),
        ("a", SEEDED, 1.0),
        ("b", SEEDED, 1.0),
        (None, SEEDED, 1.0),
        ("b", GREEDY, 1.0),
        ("a", GREEDY, 0.5),
        ("a", GREEDY, 1.0),
        ("a", GREEDY, 0.0),
        (None, GREEDY, 1.0),
    ]
    got = [(await generate(engine, name, sampling, scale))[0] for name, sampling, scale in order]
    by_name = {None: None, "a": adapters.a, "b": adapters.b}
    expected: dict[tuple[str | None, Sampling, float], str] = {}
    for name, files in by_name.items():
        runs = sorted({(s, sc) for n, s, sc in order if n == name}, key=repr)
        for (sampling, scale), text in zip(runs, await fresh(tiny_model, files, runs), strict=True):
            expected[(name, sampling, scale)] = text
    assert got == [expected[step] for step in order]
    # Scale 0 is the base model; scale 0.5 is neither the base nor the full adapter.
    assert expected[("a", GREEDY, 0.0)] == expected[(None, GREEDY, 1.0)]
    assert expected[("a", GREEDY, 0.5)] not in (expected[(None, GREEDY, 1.0)], expected[("a", GREEDY, 1.0)])


async def test_probabilities_follow_the_adapter(engine: LlamaCppEngine, tiny_model: TinyModel) -> None:
    candidates = ["<tool_call>", "Hello", "I"]
    base = await engine.token_probabilities(PROMPT, candidates)
    with_a = await engine.token_probabilities(PROMPT, candidates, "a")
    again = await engine.token_probabilities(PROMPT, candidates)
    # `again` reuses the base slot's cached prefix: the last prompt token is evaluated in a step
    # of its own either way (engines/batching.py), so the numbers are the same to the bit.
    assert again == base and with_a != pytest.approx(base, rel=1e-3)
    await generate(engine, "b")  # the context now holds b's adapter
    assert await engine.token_probabilities(PROMPT, candidates, "a") == with_a


async def test_unknown_and_unloaded_adapters_are_not_found(engine: LlamaCppEngine, adapters: Adapters) -> None:
    with pytest.raises(NotFound, match="'nope' is not loaded"):
        await generate(engine, "nope")
    await generate(engine, "a")
    await engine.unload_adapter("a")
    await engine.unload_adapter("a")  # a second unload is a no-op
    assert engine.adapters() == {"b"}
    with pytest.raises(NotFound, match="'a' is not loaded"):
        await generate(engine, "a")
    with pytest.raises(NotFound):
        await engine.token_probabilities(PROMPT, ["I"], "a")
    base_after, _ = await generate(engine, None)
    await engine.load_adapter(adapters.a)
    await engine.load_adapter(adapters.a)  # loading twice is a no-op
    assert (await generate(engine, "a"))[0] != base_after


async def test_unloading_the_active_adapter_returns_to_the_base(engine: LlamaCppEngine, tiny_model: TinyModel) -> None:
    await generate(engine, "b")
    await engine.unload_adapter("b")
    [base_text] = await fresh(tiny_model, None, [(GREEDY, 1.0)])
    assert (await generate(engine, None))[0] == base_text


async def test_bad_adapter_files_are_refused(engine: LlamaCppEngine, tiny_model: TinyModel, tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="no GGUF LoRA"):
        await engine.load_adapter(AdapterFiles("peft-only", tmp_path, None))
    # The base model is a GGUF, but not a LoRA: llama.cpp refuses it, the engine says so.
    with pytest.raises(EngineError, match="refused the LoRA"):
        await engine.load_adapter(AdapterFiles("not-a-lora", tmp_path, tiny_model.gguf))
    assert engine.adapters() == {"a", "b"}
