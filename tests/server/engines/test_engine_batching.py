"""Continuous batching in the llama.cpp engine: many requests decoded in one batch.

Real llama.cpp and llguidance on the tiny random model. Each sequence has its own grammar,
sampler, stop strings and cancellation; these tests run several at once and check that each
gets what it would get alone (same model, same prompt, same seed), that grammars hold, that
cancelling one leaves the others as they were, and that prompt caches and chunked prefill work.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import jsonschema
import pytest
from peft import LoraConfig

from server.constraints import ConstraintSpec, compile_constraint
from server.engines.base import AdapterFiles, Cancel, Finish, GenerateRequest, Piece
from server.engines.llamacpp import LlamaCppEngine, default_slots
from server.engines.slots import BASE, Slot, Waiter, group_to_admit, pick_slot
from server.errors import NotFound
from server.toolcalls import get_format
from server.types import ChoiceMode, Sampling, TextFormat, Tool, ToolChoice
from tests.support.lora_helpers import ALL_LINEAR, PEFT_WARNINGS, make_peft_adapter
from training.demo.tiny import TinyModel
from training.export.gguf_lora import convert_lora

pytestmark = PEFT_WARNINGS

CONTEXT = 2048
SLOTS = 4


def prompt(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


PROMPTS = [prompt(t) for t in ("Where is order 12345?", "Weather in Paris", "hi", "Book a table for two at 8")]


@pytest.fixture(params=[False, True], ids=["split", "unified"])
async def engine(tiny_model: TinyModel, request: pytest.FixtureRequest) -> AsyncIterator[LlamaCppEngine]:
    """Both KV layouts: a stream per slot (the default) and one buffer (`model.kv_unified`)."""
    engine = LlamaCppEngine(tiny_model.gguf, context_length=CONTEXT, threads=1, slots=SLOTS, kv_unified=request.param)
    yield engine
    await engine.close()


@pytest.fixture()
async def split_engine(tiny_model: TinyModel) -> AsyncIterator[LlamaCppEngine]:
    """One KV stream per slot (`model.kv_unified: false`): each sequence's attention reads only
    its own cells, so what else is in the batch does not change its sums."""
    engine = LlamaCppEngine(tiny_model.gguf, context_length=CONTEXT, threads=1, slots=SLOTS, kv_unified=False)
    yield engine
    await engine.close()


async def run(
    engine: LlamaCppEngine,
    request: GenerateRequest,
    cancel: Cancel | None = None,
    log: list[int] | None = None,
    tag: int = 0,
) -> tuple[str, Finish | None]:
    text, finish = [], None
    async for event in engine.generate(request, cancel or Cancel()):
        if log is not None:
            log.append(tag)
        if isinstance(event, Piece):
            text.append(event.text)
        else:
            finish = event
    return "".join(text), finish


def seeded(max_tokens: int = 24, seed: int = 7) -> Sampling:
    return Sampling(max_tokens=max_tokens, temperature=1.0, seed=seed)


# -- pure bookkeeping -----------------------------------------------------------------------


def test_pick_slot_prefers_the_cache_a_prompt_extends() -> None:
    slots = [Slot(0, [1, 2, 3, 4], used_at=2), Slot(1, [9, 9], used_at=1), Slot(2, [], used_at=0)]
    assert pick_slot(slots, [1, 2, 3, 4, 5, 6], BASE) == (slots[0], 4)
    assert pick_slot(slots, [1, 2, 3, 4], BASE) == (slots[0], 3)  # the last token is evaluated again
    # A short shared prefix does not take over another conversation's cache: the LRU slot does.
    assert pick_slot(slots, [1, 7, 7], BASE) == (slots[2], 0)
    assert pick_slot(slots, [1, 2, 3, 4, 5], (1, 1.0)) == (slots[2], 0)  # other weights: no reuse
    for slot in slots:
        slot.busy = True
    assert pick_slot(slots, [1], BASE) is None


def test_pick_slot_keeps_busy_slots_adjacent_among_equals() -> None:
    # Three slots hold the same prompt; slot 1 is busy. Slot 0 or 2 serve the prompt as well
    # as slot 3 but keep the busy ids consecutive (one pass over the weights per step).
    slots = [Slot(i, [1, 2, 3, 9 + i], used_at=5 - i) for i in range(4)]
    slots[1].busy = True
    picked, keep = pick_slot(slots, [1, 2, 3, 4], BASE)  # type: ignore[misc]
    assert picked.id in (0, 2) and keep == 3
    # Adjacency never outranks reuse, nor takes an unrelated history over the LRU one.
    slots[3].tokens = [1, 2, 3, 4, 5]
    assert pick_slot(slots, [1, 2, 3, 4, 5, 6], BASE) == (slots[3], 5)
    assert pick_slot(slots, [7, 7], BASE) == (slots[3], 0)  # LRU: used_at 2 is the oldest


def test_adapter_groups_switch_after_patience_and_never_starve() -> None:
    a, b = (1, 1.0), (2, 1.0)
    waiting = [Waiter(b, since=0.0), Waiter(a, since=0.5)]
    assert group_to_admit(waiting, a, running=3, now=0.5, patience_s=1.0) == a  # b waits a little
    assert group_to_admit(waiting, a, running=3, now=1.5, patience_s=1.0) is None  # drain for b
    assert group_to_admit(waiting, a, running=0, now=1.6, patience_s=1.0) == b  # oldest goes first
    assert group_to_admit([], a, running=0, now=0.0, patience_s=1.0) == a
    assert default_slots(4096) == 4 and default_slots(512) == 8 and default_slots(32768) == 1


# -- the engine -----------------------------------------------------------------------------


async def test_a_batch_answers_as_each_request_alone(split_engine: LlamaCppEngine) -> None:
    requests = [GenerateRequest(p, seeded(seed=i)) for i, p in enumerate(PROMPTS)]
    requests += [GenerateRequest(PROMPTS[0], Sampling(max_tokens=24, temperature=0.0))]  # 5 > 4 slots
    alone = [await run(split_engine, r) for r in requests]
    together = await asyncio.gather(*(run(split_engine, r) for r in requests))
    assert together == alone
    assert len({text for text, _ in alone}) == len(alone)


async def test_a_gap_between_busy_slots_is_closed_without_touching_its_cache(
    split_engine: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, scheduler = split_engine, split_engine._scheduler
    requests = [GenerateRequest(p, seeded(seed=i)) for i, p in enumerate(PROMPTS)]
    answers = [await run(engine, r) for r in requests]  # one prompt cached per slot, in order
    assert [s.tokens[: len(engine.tokenize(p))] for s, p in zip(scheduler._slots, PROMPTS, strict=True)] == [
        engine.tokenize(p) for p in PROMPTS
    ]
    filled: list[list[int]] = []
    fillers = scheduler._fillers

    def spy(used: list[int]) -> list[Slot]:
        slots = fillers(used)
        filled.append([s.id for s in slots])
        return slots

    monkeypatch.setattr(scheduler, "_fillers", spy)
    # Prompts 0 and 2 again, together, on their cached slots: idle slot 1 gets a throwaway token.
    together = await asyncio.gather(run(engine, requests[0]), run(engine, requests[2]))
    assert [1] in filled
    assert together == [answers[0], answers[2]]
    # Slot 1's cache is as it was: its prompt again prefills one token and answers as before.
    before = engine.prefilled_tokens
    assert await run(engine, requests[1]) == answers[1]
    assert engine.prefilled_tokens - before == 1


async def test_concurrent_grammars_each_give_valid_calls(engine: LlamaCppEngine) -> None:
    info = engine.info()
    tools = [
        Tool(
            "get_order",
            "Find an order.",
            {
                "type": "object",
                "properties": {"id": {"type": "integer"}},
                "required": ["id"],
                "additionalProperties": False,
            },
        ),
        Tool(
            "weather",
            "Weather.",
            {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
                "required": ["city", "unit"],
            },
        ),
        Tool(
            "book",
            "Book.",
            {
                "type": "object",
                "properties": {"people": {"type": "integer", "minimum": 1, "maximum": 9}},
                "required": ["people"],
            },
        ),
    ]
    hermes = get_format("hermes")
    jobs = []
    for i in range(6):  # more requests than slots: some wait inside the engine
        tool = tools[i % 3]
        spec = ConstraintSpec((tool,), ToolChoice(ChoiceMode.REQUIRED), False, TextFormat(), info.special_tokens)
        grammar = compile_constraint(spec, hermes).lark
        jobs.append((tool, GenerateRequest(PROMPTS[i % 4], seeded(max_tokens=120, seed=i), grammar)))
    answers = await asyncio.gather(*(run(engine, request) for _, request in jobs))
    for (tool, _), (text, finish) in zip(jobs, answers, strict=True):
        assert finish is not None and finish.reason == "stop", text
        [call] = hermes.parse(text).calls
        assert call.name == tool.name and not call.error
        jsonschema.validate(json.loads(call.arguments), tool.parameters)


async def test_cancelling_one_leaves_the_others_unchanged(engine: LlamaCppEngine) -> None:
    requests = [GenerateRequest(p, seeded(max_tokens=40, seed=i)) for i, p in enumerate(PROMPTS)]
    expected = await asyncio.gather(*(run(engine, r) for r in requests))
    cancel = Cancel()

    async def cancelled() -> None:
        stream = engine.generate(requests[1], cancel)
        async for event in stream:
            if isinstance(event, Piece):
                break  # mid-batch: the client leaves after its first piece, while the others decode
        await stream.aclose()  # type: ignore[attr-defined]
        assert cancel.is_set()

    *others, _ = await asyncio.gather(*(run(engine, r) for i, r in enumerate(requests) if i != 1), cancelled())
    assert others == [e for i, e in enumerate(expected) if i != 1]
    # The cancelled slot is free again: a full batch still runs.
    assert await asyncio.gather(*(run(engine, r) for r in requests)) == expected


async def test_stop_strings_and_lengths_are_per_sequence(engine: LlamaCppEngine) -> None:
    free, _ = await run(engine, GenerateRequest(PROMPTS[0], seeded(max_tokens=30)))
    stop = free[8:11]
    assert stop and stop.strip()
    stopped = GenerateRequest(PROMPTS[0], Sampling(max_tokens=30, temperature=1.0, seed=7, stop=(stop,)))
    short = GenerateRequest(PROMPTS[2], seeded(max_tokens=3))
    (text, finish), (_, short_finish) = await asyncio.gather(run(engine, stopped), run(engine, short))
    assert text == free[: free.index(stop)] and finish is not None and finish.reason == "stop"
    assert short_finish is not None and (short_finish.reason, short_finish.completion_tokens) == ("length", 3)


async def test_a_growing_conversation_prefills_only_its_new_tail(engine: LlamaCppEngine) -> None:
    first, _ = await run(engine, GenerateRequest(PROMPTS[0], seeded()))
    await asyncio.gather(*(run(engine, GenerateRequest(p, seeded())) for p in PROMPTS[1:]))  # other slots busy
    grown = PROMPTS[0] + first + "<|im_end|>\n" + prompt("And order 777?")
    before = engine.prefilled_tokens
    _, finish = await run(engine, GenerateRequest(grown, seeded()))
    assert finish is not None
    new_tokens = engine.prefilled_tokens - before
    assert 0 < new_tokens < finish.prompt_tokens - len(engine.tokenize(PROMPTS[0])) + 2


async def test_a_long_prompt_does_not_stall_short_ones(engine: LlamaCppEngine) -> None:
    long_prompt = prompt("order 12345 shipped; " * 100)  # well over a thousand tokens
    assert len(engine.tokenize(long_prompt)) > 1000
    log: list[int] = []
    runs = [run(engine, GenerateRequest(long_prompt, seeded(max_tokens=4)), log=log, tag=0)]
    short = [GenerateRequest(p, seeded(max_tokens=6)) for p in PROMPTS[1:]]
    runs += [run(engine, request, log=log, tag=i) for i, request in enumerate(short, 1)]
    await asyncio.gather(*runs)
    # Every short request streamed its whole answer before the long prompt's first token.
    assert log.index(0) > max(i for i, tag in enumerate(log) if tag != 0)


async def test_probabilities_share_the_batch(engine: LlamaCppEngine) -> None:
    alone = await engine.token_probabilities(PROMPTS[1], ["<tool_call>", "I"])
    busy = [run(engine, GenerateRequest(p, seeded())) for p in (PROMPTS[0], PROMPTS[2])]
    *_, during = await asyncio.gather(*busy, engine.token_probabilities(PROMPTS[1], ["<tool_call>", "I"]))
    assert during == pytest.approx(alone, rel=1e-5) and 0 < sum(alone) < 1


@pytest.fixture(scope="module")
def lora_files(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> list[AdapterFiles]:
    root = tmp_path_factory.mktemp("batch_lora")
    files = []
    for name, seed in (("a", 1), ("b", 2)):
        peft_dir = make_peft_adapter(
            tiny_model, LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR), root / name, seed
        )
        gguf = convert_lora(peft_dir, tiny_model.hf_dir, peft_dir / "adapter.gguf").path
        files.append(AdapterFiles(name, peft_dir, gguf))
    return files


async def test_adapter_and_base_requests_interleave(
    split_engine: LlamaCppEngine, lora_files: list[AdapterFiles]
) -> None:
    engine = split_engine
    for files in lora_files:
        await engine.load_adapter(files)
    order = [None, "a", "b", "a", None, "b", "a", None]
    requests = [
        GenerateRequest(PROMPTS[i % 4], seeded(max_tokens=16, seed=i), adapter=name) for i, name in enumerate(order)
    ]
    alone = [await run(engine, r) for r in requests]
    together = await asyncio.gather(*(run(engine, r) for r in requests))
    assert together == alone
    assert alone[1][0] != (await run(engine, GenerateRequest(PROMPTS[1], seeded(max_tokens=16, seed=1))))[0]


async def test_unloading_an_adapter_mid_answer_lets_it_finish(
    engine: LlamaCppEngine, lora_files: list[AdapterFiles]
) -> None:
    await engine.load_adapter(lora_files[0])
    request = GenerateRequest(PROMPTS[0], seeded(max_tokens=40), adapter="a")
    expected = await run(engine, request)
    stream = engine.generate(request, Cancel())
    first = await anext(stream)
    await engine.unload_adapter("a")  # between two of its steps: the running answer keeps its weights
    rest = [event async for event in stream]
    assert isinstance(first, Piece)
    assert (first.text + "".join(e.text for e in rest if isinstance(e, Piece)), rest[-1]) == expected
    with pytest.raises(NotFound):
        await run(engine, request)
    await engine.load_adapter(lora_files[0])  # a new load: the old slot caches are not reused
    before = engine.prefilled_tokens
    text, finish = await run(engine, request)
    assert (text, finish) == expected and finish is not None
    assert engine.prefilled_tokens - before == finish.prompt_tokens
