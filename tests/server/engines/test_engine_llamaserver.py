"""The llama-server engine against llama.cpp's real C++ server on loopback (built by `make
llama-server`; these tests skip when it is not built), serving the tiny model: what it learns
at start-up, streaming, stops, GBNF grammars (full and lazy), probabilities and per-request
LoRA compared with the embedded llama.cpp engine, and every tool_choice mode through a gateway."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import openai
import pytest
from peft import LoraConfig

from server.constraints.native import native_constraint
from server.constraints.spec import ConstraintSpec
from server.engines import llamaserver
from server.engines.base import AdapterFiles, Cancel, Finish, Gbnf, GenerateRequest, Piece
from server.engines.llamacpp import LlamaCppEngine
from server.engines.remote import Upstream
from server.errors import EngineError, InvalidRequest
from server.toolcalls import get_format
from server.types import ChoiceMode, Sampling, TextFormat, Tool, ToolChoice
from tests.support.lora_helpers import ALL_LINEAR, PEFT_WARNINGS, make_peft_adapter
from tests.support.upstreams import Server, llama_server, need_llama_server
from training.demo.tiny import TEMPLATE_PATH, TinyModel
from training.export.gguf_lora import convert_lora

pytestmark = PEFT_WARNINGS
PROMPT = "<|im_start|>user\nWhere is order 12345?<|im_end|>\n<|im_start|>assistant\n"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
PING = {"type": "function", "function": {"name": "ping", "description": "No arguments."}}


@pytest.fixture(scope="module")
def loras(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> list[AdapterFiles]:
    need_llama_server()
    root = tmp_path_factory.mktemp("ls_lora")
    out = []
    for name, seed in (("a", 1), ("b", 2)):
        peft_dir = make_peft_adapter(
            tiny_model, LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR), root / name, seed
        )
        gguf = convert_lora(peft_dir, tiny_model.hf_dir, peft_dir / f"{name}.gguf").path
        out.append(AdapterFiles(name, peft_dir, gguf))
    return out


@pytest.fixture(scope="module")
def server(
    tiny_model: TinyModel, loras: list[AdapterFiles], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    extra = tuple(x for f in loras for x in ("--lora", str(f.gguf))) + ("--lora-init-without-apply",)
    with llama_server(tiny_model.gguf, tmp_path_factory.mktemp("logs"), slots=2, ctx=2048, extra=extra) as s:
        yield s


def engine_for(server: Server) -> llamaserver.LlamaServerEngine:
    upstream, info, facts = llamaserver.discover([Upstream(server.url, slots=2, startup_timeout_s=30)])
    return llamaserver.LlamaServerEngine(upstream, info, facts)


async def run(engine: Any, request: GenerateRequest) -> tuple[str, Finish]:
    events = [e async for e in engine.generate(request, Cancel())]
    assert isinstance(events[-1], Finish)
    return "".join(e.text for e in events if isinstance(e, Piece)), events[-1]


def test_start_up_reads_template_context_and_special_tokens(server: Server, loras: list[AdapterFiles]) -> None:
    upstream, info, facts = llamaserver.discover([Upstream(server.url)])
    assert info.chat_template and info.chat_template.strip() == TEMPLATE_PATH.read_text(encoding="utf-8").strip()
    assert info.context_length == 1024  # per slot: 2048 over 2 slots
    assert info.grammar_syntax == "gbnf" and info.eos_token == "<|im_end|>"
    # Special tokens probed from the template: one token only when special tokens are parsed.
    assert dict(info.special_token_ids)["<tool_call>"] == 3 and "<tools>" not in info.special_tokens
    assert info.bos_token == "" and not facts.add_bos  # this model has no BOS
    assert [Path(p).name for p, _ in facts.loras] == ["a.gguf", "b.gguf"] and [i for _, i in facts.loras] == [0, 1]
    llamaserver.verify_enforces_grammar(upstream)  # llama-server applies `grammar`: no refusal


async def test_streams_stops_and_counts_tokens(server: Server) -> None:
    engine = engine_for(server)
    text, finish = await run(engine, GenerateRequest(PROMPT, Sampling(max_tokens=20, seed=5)))
    again, _ = await run(engine, GenerateRequest(PROMPT, Sampling(max_tokens=20, seed=5)))
    assert text == again and finish.reason == "length" and finish.completion_tokens == 20
    assert finish.prompt_tokens > 10
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut, stopped = await run(engine, GenerateRequest(PROMPT, Sampling(max_tokens=20, seed=5, stop=(stop,))))
    assert stopped.reason == "stop" and cut == text[: text.index(stop)]
    await engine.close()


async def test_full_grammar_keeps_special_tokens_and_drops_the_eos(server: Server) -> None:
    engine = engine_for(server)
    grammar = Gbnf('root ::= <tool_call> "{\\"n\\": " [0-9] "}" </tool_call>')
    request = GenerateRequest(PROMPT, Sampling(max_tokens=30, seed=1), grammar='start: "x"', gbnf=grammar)
    text, finish = await run(engine, request)
    assert re.fullmatch(r'<tool_call>\{"n": [0-9]\}</tool_call>', text), text
    assert finish.reason == "stop"  # the grammar ended: only the EOS was allowed, and its text is not shown
    await engine.close()


async def test_lazy_grammar_applies_from_the_trigger_on(server: Server) -> None:
    """Free text until the trigger word, then the grammar: here "e", then at most 6 characters
    other than "!", then "!" and the end."""
    engine = engine_for(server)
    grammar = Gbnf('root ::= "e" [^!]? [^!]? [^!]? [^!]? [^!]? [^!]? "!"', triggers=("e",))
    for seed in range(3):
        text, finish = await run(engine, GenerateRequest(PROMPT, Sampling(max_tokens=64, seed=seed), gbnf=grammar))
        if "e" in text:
            assert finish.reason == "stop" and re.fullmatch(r"[^e]*e[^!]{0,6}!", text, re.S), text
            break
    else:
        pytest.fail("no sample wrote the trigger")
    await engine.close()


async def test_auto_is_lazy_on_the_opener_and_the_server_takes_the_grammar(server: Server) -> None:
    engine = engine_for(server)
    info = engine.info()
    tool = Tool("get_weather", parameters=WEATHER["function"]["parameters"])
    spec = ConstraintSpec((tool,), ToolChoice(ChoiceMode.AUTO), True, TextFormat(), info.special_tokens)
    lazy = native_constraint(spec, get_format("hermes"))
    assert lazy is not None and lazy.triggers == ("<tool_call>",)
    assert 'open ::= "<tool_call>"' in lazy.gbnf and "close ::= </tool_call>" in lazy.gbnf
    full = native_constraint(replace(spec, choice=ToolChoice(ChoiceMode.REQUIRED)), get_format("hermes"))
    assert full is not None and not full.triggers and "open ::= <tool_call>" in full.gbnf
    for grammar in (lazy, full):  # llama-server parses both (it answers 400 to a grammar it cannot)
        text, _ = await run(
            engine, GenerateRequest(PROMPT, Sampling(max_tokens=48, seed=2), gbnf=Gbnf(grammar.gbnf, grammar.triggers))
        )
        if grammar is full:
            assert text.startswith('<tool_call>\n{"name": "get_weather"')
    await engine.close()


async def test_a_lark_grammar_alone_is_refused(server: Server) -> None:
    engine = engine_for(server)
    with pytest.raises(EngineError, match="GBNF"):
        await run(engine, GenerateRequest(PROMPT, Sampling(max_tokens=4), grammar='start: "x"'))
    await engine.close()


@pytest.mark.slow
async def test_probabilities_and_lora_match_the_embedded_engine(
    server: Server, tiny_model: TinyModel, loras: list[AdapterFiles]
) -> None:
    remote = engine_for(server)
    local = LlamaCppEngine(tiny_model.gguf, context_length=1024, threads=1)
    for files in loras:
        await remote.load_adapter(files)
        await local.load_adapter(files)
    candidates = ["<tool_call>", "What", "Sure"]
    for adapter, scale in ((None, 1.0), ("a", 1.0), ("b", 1.0), ("a", 0.5)):
        want = await local.token_probabilities(PROMPT, candidates, adapter, scale)
        got = await remote.token_probabilities(PROMPT, candidates, adapter, scale)
        assert got == pytest.approx(want, abs=1e-3), (adapter, scale)
    half = await local.token_probabilities(PROMPT, candidates, "a", 0.5)
    assert half != pytest.approx(await local.token_probabilities(PROMPT, candidates, "a"), abs=1e-6)
    greedy = Sampling(max_tokens=16, temperature=0.0)
    texts = {}
    for adapter in (None, "a", "b"):
        request = GenerateRequest(PROMPT, greedy, adapter=adapter)
        texts[adapter], _ = await run(remote, request)
        assert texts[adapter] == (await run(local, request))[0], adapter
    assert len(set(texts.values())) == 3  # each adapter changes the answer
    with pytest.raises(InvalidRequest, match="not loaded"):
        await run(remote, GenerateRequest(PROMPT, greedy, adapter="missing"))
    missing = AdapterFiles("c", loras[0].peft_dir, loras[0].peft_dir / "other.gguf")
    with pytest.raises(EngineError, match="--lora"):
        await remote.load_adapter(missing)
    # A replica started with another --lora list would apply the wrong LoRA by id: refused.
    reordered = llamaserver.ServerFacts(remote._facts.add_bos, remote._facts.loras[::-1], remote._facts.specials)
    other = llamaserver.LlamaServerEngine(remote.upstream, remote.info(), reordered)
    with pytest.raises(EngineError, match="same --lora files in the same order"):
        await other.load_adapter(loras[0])
    await other.close()
    await remote.close()
    await local.close()


# -- through the gateway: every tool_choice mode, grammar-enforced by llama-server ------------


@pytest.mark.slow
def test_every_tool_choice_mode_holds_on_llama_server(server: Server, tiny_model: TinyModel) -> None:
    from tests.support.live import live_gateway

    flags = {
        "engine.kind": "llama-server",
        "engine.urls": [server.url],
        "model.served_name": "tiny",
        "limits.max_tokens": 200,
        "limits.default_max_tokens": 160,
    }
    gen = live_gateway(tiny_model.gguf, **flags)
    live = next(gen)
    tools = [WEATHER, PING]
    modes: list[tuple[str, Any, bool]] = [
        ("required", "required", True),
        ("named", {"type": "function", "function": {"name": "get_weather"}}, True),
        ("none", "none", True),
        ("auto", "auto", True),
        ("parallel_false", "required", False),
    ]
    try:
        with openai.OpenAI(base_url=live.v1, api_key="unused", max_retries=0, timeout=120) as client:
            for label, choice, parallel in modes:
                for stream in (False, True):
                    calls, content = _ask(client, tools, choice, parallel, stream)
                    _check(label, calls, content)
    finally:
        gen.close()


def _ask(
    client: openai.OpenAI, tools: list[Any], choice: Any, parallel: bool, stream: bool
) -> tuple[list[tuple[str, str]], str]:
    kwargs: dict[str, Any] = dict(
        model="tiny",
        tools=tools,
        tool_choice=choice,
        max_tokens=160,
        seed=3,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
    )
    if not parallel:
        kwargs["parallel_tool_calls"] = False
    if not stream:
        message = client.chat.completions.create(**kwargs).choices[0].message
        return [(c.function.name, c.function.arguments) for c in message.tool_calls or []], message.content or ""
    calls: dict[int, list[str]] = {}
    content = ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        delta = chunk.choices[0].delta if chunk.choices else None
        content += (delta.content or "") if delta else ""
        for call in (delta.tool_calls or []) if delta else []:
            entry = calls.setdefault(call.index, ["", ""])
            entry[0] += call.function.name or "" if call.function else ""
            entry[1] += call.function.arguments or "" if call.function else ""
    return [(name, args) for name, args in calls.values()], content


def _check(label: str, calls: list[tuple[str, str]], content: str) -> None:
    for name, arguments in calls:
        args = json.loads(arguments)
        assert name in ("get_weather", "ping"), label
        if name == "get_weather":
            assert isinstance(args["city"], str) and len(args["city"]) <= 20 and set(args) <= {"city", "unit"}
    if label in ("required", "named", "parallel_false"):
        assert calls, label
    if label == "named":
        assert {n for n, _ in calls} == {"get_weather"} and len(calls) == 1
    if label == "parallel_false":
        assert len(calls) == 1
    if label == "none":
        assert not calls and "<tool_call>" not in content
