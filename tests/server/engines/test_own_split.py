"""The grammar keeps the model's own tokens where it admits them (llama.cpp's order: the
model's pick first, the mask only when the pick is out of grammar), checked on SmolLM2's real
vocabulary and weights through the embedded engine.

Why it matters: where one continuation is forced, llguidance's mask offers it tokenized alone.
`"}}` after an enum value is `"` `}}` there; a model about to write a second call splits it
`"}` `},`. Sampled from the mask, SmolLM2 asked to copy a two-call answer closed the list after
the first call: the grammar dropped a call the model meant."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.constraints import ConstraintSpec, compile_constraint
from server.engines.base import Cancel, GenerateRequest, Piece
from server.engines.llamacpp import LlamaCppEngine
from server.toolcalls import get_format
from server.types import ChoiceMode, Sampling, TextFormat, Tool, ToolChoice

pytestmark = pytest.mark.slow
WEATHER = Tool(
    name="get_weather",
    description="Get the current weather in a city",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "London"]}},
        "required": ["city"],
    },
)
TWO_CALLS = {
    "tool_calls": [
        {"name": "get_weather", "arguments": {"city": "Rome"}},
        {"name": "get_weather", "arguments": {"city": "London"}},
    ]
}


@pytest.fixture()
async def smol(smol_gguf: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = LlamaCppEngine(smol_gguf, context_length=512, threads=2)
    yield engine
    await engine.close()


async def _answer(engine: LlamaCppEngine, prompt: str, grammar: str | None) -> str:
    request = GenerateRequest(prompt, Sampling(max_tokens=60, temperature=0.0), grammar=grammar)
    return "".join([e.text async for e in engine.generate(request, Cancel()) if isinstance(e, Piece)])


async def test_a_forced_close_keeps_the_model_s_split_and_its_second_call(smol: LlamaCppEngine) -> None:
    spec = ConstraintSpec((WEATHER,), ToolChoice(ChoiceMode.REQUIRED), True, TextFormat(), smol.info().special_tokens)
    lark = compile_constraint(spec, get_format("json_envelope")).lark
    assert lark is not None
    # The premise: after `Rome` the grammar admits only `"}}`; alone it is `"` `}}`, and the
    # model's way on is `"}` `},`.
    assert smol.tokenize('"}}') != smol.tokenize('"}') + smol.tokenize("}")
    assert smol.tokenize('"}},') == smol.tokenize('"}') + smol.tokenize("},")
    prompt = f"<|im_start|>user\nCopy this exactly: {json.dumps(TWO_CALLS)}<|im_end|>\n<|im_start|>assistant\n"
    assert json.loads(await _answer(smol, prompt, lark)) == TWO_CALLS
