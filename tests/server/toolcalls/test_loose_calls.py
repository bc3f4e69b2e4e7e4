"""Calls real models write outside their format's markers (server/toolcalls/loose.py): Qwen2.5
writes ```json blocks and bare objects, not <tool_call> tags. A call-shaped block naming a
declared tool is a call; anything else stays text, byte for byte; streamed equals whole."""

from __future__ import annotations

import asyncio

import pytest

from server.admission import Admission
from server.chat import CallEvent, ChatRequest, ContentEvent, DoneEvent, run_chat
from server.engines.base import Cancel
from server.metrics import Metrics
from server.serving.served import Served
from server.toolcalls import CallDone, TextDelta, get_format
from server.types import ChoiceMode, Message, Sampling, Tool, ToolChoice
from tests.support.fakes import INFO, FakeEngine

HERMES = get_format("hermes")
FENCED = '```json\n{\n  "name": "get_weather",\n  "arguments": {\n    "city": "Paris"\n  }\n}\n```'
BARE = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
NOT_A_CALL = '```json\n{\n  "name": "Bob",\n  "arguments": {\n    "age": 30\n  }\n}\n```'

CALLS = [
    (FENCED, "", [("get_weather", '{"city": "Paris"}')]),
    (BARE, "", [("get_weather", '{"city": "Paris"}')]),
    ("  " + BARE + "\n", "", [("get_weather", '{"city": "Paris"}')]),
    ('```\n{"name": "f", "parameters": {"x": 1}}\n```', "", [("f", '{"x": 1}')]),
    (
        "Let me check.\n" + BARE + "\n" + BARE.replace("Paris", "Rome"),
        "Let me check.",
        [("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}')],
    ),
    (
        '[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"k": "v"}}]',
        "",
        [("a", "{}"), ("b", '{"k": "v"}')],
    ),
    (BARE + "\nDone.", "\nDone.", [("get_weather", '{"city": "Paris"}')]),
]
TEXTS = [
    "The weather is nice.\nSee you {soon}.",
    '```python\nprint({"name": 1})\n```\n',
    '```json\n{"age": 30}\n```',
    'Inline {"name": "get_weather", "arguments": {}} is not at a line start',
    '{"name": "Bob", "age": 30}',  # no arguments key: not call-shaped
    "```json\n[1, 2, 3]\n```",
    "Trailing space kept   \n\n",
    "`` not a fence ``` nor this\n```\n",
]


def _stream(text: str, step: int) -> tuple[str, list[tuple[str, str]], bool]:
    parser = HERMES.stream_parser()
    events = []
    for i in range(0, len(text), step):
        events += parser.feed(text[i : i + step])
    events += parser.close()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [(e.call.name, e.call.arguments) for e in events if isinstance(e, CallDone)]
    return content, calls, parser.unclosed


@pytest.mark.parametrize(("text", "content", "calls"), CALLS)
def test_loose_blocks_are_calls_whole_and_streamed(text: str, content: str, calls: list[tuple[str, str]]) -> None:
    parsed = HERMES.parse(text)
    assert (parsed.content, [(c.name, c.arguments) for c in parsed.calls]) == (content, calls)
    for step in (1, 3, 7):
        assert _stream(text, step) == (content, calls, False)


@pytest.mark.parametrize("text", TEXTS)
def test_text_that_is_not_call_shaped_passes_byte_for_byte(text: str) -> None:
    assert HERMES.parse(text).calls == ()
    for step in (1, 2, 5, len(text)):
        assert _stream(text, step) == (text, [], False)


def test_a_block_cut_inside_a_call_is_neither_call_nor_text() -> None:
    parsed = HERMES.parse('```json\n{"name": "get_weather", "arguments": {"ci')
    assert (parsed.content, parsed.calls, parsed.unclosed) == ("", (), True)
    cut_json = HERMES.parse('```json\n{"age": 3')  # not a call: the text it was
    assert (cut_json.content, cut_json.unclosed) == ('```json\n{"age": 3', False)


def test_loose_calls_carry_their_text_and_tagged_calls_do_not() -> None:
    [loose] = HERMES.parse(FENCED).calls
    assert loose.raw == FENCED
    [tagged] = HERMES.parse("<tool_call>\n" + BARE + "\n</tool_call>").calls
    assert tagged.raw is None


# ---- the chat layer: a declared name in a mode that allows calls makes it a call ----

WEATHER = Tool("get_weather", "", {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})


def _answer(output: str, mode: ChoiceMode = ChoiceMode.AUTO, parallel: bool = True) -> tuple[str, list[str], str]:
    served = Served(
        "fake", FakeEngine([([output], "stop")]), INFO, HERMES, INFO.chat_template or "", Admission(1, 4, 5.0)
    )
    request = ChatRequest(
        messages=(Message("user", "weather?"),),
        tools=(WEATHER,),
        choice=ToolChoice(mode),
        parallel=parallel,
        sampling=Sampling(max_tokens=64),
    )

    async def collect() -> list[object]:
        return [e async for e in run_chat(served, request, Metrics(), Cancel())]

    events = asyncio.run(collect())
    content = "".join(e.text for e in events if isinstance(e, ContentEvent))
    calls = [e.call.arguments for e in events if isinstance(e, CallEvent)]
    done = events[-1]
    assert isinstance(done, DoneEvent) and not done.invalid_calls
    return content, calls, done.finish_reason


def test_a_loose_call_of_a_declared_tool_is_a_call() -> None:
    assert _answer(FENCED) == ("", ['{"city": "Paris"}'], "tool_calls")


def test_a_loose_call_of_an_undeclared_name_stays_text() -> None:
    assert _answer(NOT_A_CALL) == (NOT_A_CALL, [], "stop")


def test_tool_choice_none_keeps_loose_calls_as_text() -> None:
    assert _answer(FENCED, ChoiceMode.NONE) == (FENCED, [], "stop")


def test_parallel_tool_calls_false_keeps_one_loose_call() -> None:
    two = BARE + "\n" + BARE.replace("Paris", "Rome")
    content, calls, reason = _answer(two, parallel=False)
    assert calls == ['{"city": "Paris"}'] and reason == "tool_calls"
    assert content == BARE.replace("Paris", "Rome")


def test_a_loose_call_that_fails_validation_is_retried_under_the_grammar() -> None:
    """The model meant a call of a declared tool but its ```json block misses `city`: the retry
    runs under the `required` grammar, which writes the call in the format's markers."""
    calls, grammars = _retried('```json\n{"name": "get_weather", "arguments": {"town": "Paris"}}\n```')
    assert calls == ['{"city": "Paris"}']
    first, retry = grammars
    assert "start: reply | calls" in first and "start: calls" in retry


def test_a_loose_call_with_an_undeclared_argument_is_rewritten_under_the_grammar() -> None:
    """Valid JSON Schema (the tool does not forbid extra properties) but not what the grammar
    allows (objects decode closed): the retry writes the call the grammar allows."""
    calls, grammars = _retried(
        '```json\n{"name": "get_weather", "arguments": {"city": "Paris", "required": ["city"]}}\n```'
    )
    assert calls == ['{"city": "Paris"}']
    assert len(grammars) == 2 and "start: calls" in grammars[1]


def _retried(bad: str) -> tuple[list[str], list[str]]:
    """The calls answered and the grammar of each attempt when the model first writes `bad`,
    then (if asked again) the right call in the format's markers."""
    good = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    engine = FakeEngine([([bad], "stop"), ([good], "stop")])
    served = Served("fake", engine, INFO, HERMES, INFO.chat_template or "", Admission(1, 4, 5.0))
    request = ChatRequest(messages=(Message("user", "weather?"),), tools=(WEATHER,), sampling=Sampling(max_tokens=64))

    async def collect() -> list[object]:
        return [e async for e in run_chat(served, request, Metrics(), Cancel())]

    events = asyncio.run(collect())
    return [e.call.arguments for e in events if isinstance(e, CallEvent)], [r.grammar or "" for r in engine.requests]


def test_training_scores_loose_blocks_as_the_gateway_serves_them() -> None:
    from training.evaluation.verifier import Expected, ToolCallingVerifier

    verifier = ToolCallingVerifier("hermes")
    expected = Expected(calls=())
    assert not verifier.score([WEATHER], expected, NOT_A_CALL).called  # text, as served
    assert verifier.score([WEATHER], expected, FENCED).called  # a call, as served


def test_json_that_is_no_call_streams_at_once() -> None:
    """A response_format answer is text: released as it comes, not held until the value closes."""
    parser = HERMES.stream_parser()
    events = parser.feed('{"s": "a long answer') + parser.feed(" goes on")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == '{"s": "a long answer goes on'
    held = HERMES.stream_parser()
    assert held.feed('{\n  "name": "get_weather", "arguments": {"ci') == []  # may still be a call
