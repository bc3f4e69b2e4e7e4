"""Every registered tool-call format: parse(render(x)) == x for what the format can carry,
streaming (char by char, random chunks) equals whole-text parsing, the shared `<think>` rule, and
malformed output parsed as each format's docstring says, never raised."""

from __future__ import annotations

import json
import keyword
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.toolcalls import CallDone, Parsed, TextDelta, ToolFormat, format_names, get_format
from server.types import ToolCall

FORMATS = format_names()
WHOLE_OUTPUT = {"llama3_json", "json_envelope", "pythonic"}  # no content beside calls
KEYWORD_ARGS = {"pythonic", "qwen3_coder"}  # argument names are written bare

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**15), 10**15)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(['"', "\\", "\n", "</tool_call>", "]}", "\u00e9\u4e2d\U0001f600", "true", "12", "[ARGS]"])
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)  # fmt: skip
identifiers = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: not keyword.iskeyword(n) and n != "all"
)


def call_lists(fmt: str) -> st.SearchStrategy[list[ToolCall]]:
    keys = identifiers if fmt in KEYWORD_ARGS else st.text(max_size=10)
    args = st.dictionaries(keys, values, max_size=4)
    calls = st.builds(lambda n, a: ToolCall(n, json.dumps(a, ensure_ascii=False)), identifiers, args)
    return st.lists(calls, max_size=3)


def carried(fmt: ToolFormat, content: str, calls: list[ToolCall]) -> bool:
    """Whether the format can carry this content beside these calls (see each module docstring)."""
    if content.lstrip(" \t\n\r").startswith("<think>"):
        return False  # the shared <think> rule: a leading block is reasoning
    if fmt.name == "json_envelope":
        return not calls or not content
    if fmt.name in WHOLE_OUTPUT:
        return not (calls and content) and not content.lstrip(" \t\n\r").startswith(("{", "[", "<|python_tag|>"))
    banned = fmt.envelope.banned + ((fmt.envelope.close,) if fmt.name in ("hermes", "qwen3_coder") else ())
    if any(b in content for b in banned):
        return False
    return not (fmt.name == "functionary_v3" and calls and content.endswith(">"))


def same_calls(parsed: Parsed, calls: list[ToolCall]) -> bool:
    got = [(c.name, json.loads(c.arguments), c.error) for c in parsed.calls]
    return got == [(c.name, json.loads(c.arguments), None) for c in calls]


def stream(fmt: ToolFormat, chunks: list[str]) -> tuple[str, list[tuple[str, str, str | None]], bool]:
    parser = fmt.stream_parser()
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    calls = [(e.call.name, e.call.arguments, e.call.error) for e in events if isinstance(e, CallDone)]
    return content, calls, parser.unclosed


def whole(fmt: ToolFormat, text: str) -> tuple[str, list[tuple[str, str, str | None]], bool]:
    parsed = fmt.parse(text)
    return parsed.content, [(c.name, c.arguments, c.error) for c in parsed.calls], parsed.unclosed


def chunked(text: str, data: st.DataObject) -> list[str]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("name", FORMATS)
def test_parse_inverts_render(name: str) -> None:
    fmt = get_format(name)

    @SETTINGS
    @given(st.text(max_size=30), call_lists(name))
    def check(content: str, calls: list[ToolCall]) -> None:
        if not carried(fmt, content, calls):
            return
        parsed = fmt.parse(fmt.render(content, calls))
        assert (parsed.content, parsed.unclosed) == (content, False)
        assert same_calls(parsed, calls)

    check()


TAILS = ["", "\ntrailing words", "<tool_ca", "[TOOL_", ">>", "Action", '{"na', "[f(", "<think>x"]


@pytest.mark.parametrize("name", FORMATS)
def test_stream_parse_equals_parse_in_any_chunking(name: str) -> None:
    fmt = get_format(name)

    @SETTINGS
    @given(st.text(max_size=20), call_lists(name), st.sampled_from(TAILS), st.integers(0, 40), st.data())
    def check(content: str, calls: list[ToolCall], tail: str, cut: int, data: st.DataObject) -> None:
        text = fmt.render(content, calls) + tail
        for sample in (text, text[: len(text) - cut]):
            expected = whole(fmt, sample)
            assert stream(fmt, list(sample)) == expected
            assert stream(fmt, chunked(sample, data)) == expected

    check()


@pytest.mark.parametrize("name", FORMATS)
def test_reasoning_block_is_not_content_and_its_calls_are_ignored(name: str) -> None:
    fmt = get_format(name)
    call = ToolCall("get_weather", '{"city": "Paris"}')
    inner = fmt.render(None, [ToolCall("inside", "{}")])
    answer = fmt.render(None, [call])
    text = f"  <think>\nShould I call?\n{inner}\n</think>\n\n{answer}"
    parsed = fmt.parse(text)
    assert parsed.content == "" and [c.name for c in parsed.calls] == ["get_weather"]
    assert stream(fmt, list(text)) == whole(fmt, text)
    assert fmt.parse("<think>cut short").content == ""
    assert fmt.parse("Hi <think>x</think>").content == "Hi <think>x</think>"  # only a leading block


@pytest.mark.parametrize("name", FORMATS)
def test_any_string_argument_round_trips(name: str) -> None:
    fmt = get_format(name)

    @SETTINGS
    @given(st.text(max_size=40), st.data())
    def check(value: str, data: st.DataObject) -> None:
        text = fmt.render(None, [ToolCall("f", json.dumps({"v": value}, ensure_ascii=False))])
        _, [(_, arguments, error)], unclosed = stream(fmt, chunked(text, data))
        assert error is None and not unclosed and json.loads(arguments) == {"v": value}

    check()


def _call(name: str, args: dict[str, Any]) -> ToolCall:
    return ToolCall(name, json.dumps(args))


# (format, output, content, [(name, arguments or None, error expected)], unclosed)
MALFORMED: list[tuple[str, str, str, list[tuple[str, Any, bool]], bool]] = [
    ("hermes", '<tool_call>\n{"name": "f", "arguments": {"a": }\n</tool_call>', "", [("f", None, True)], False),
    ("llama3_json", '{"name": "f", "parameters": {"a": 1}', "", [], True),
    ("llama3_json", '<|python_tag|>{"name": "f", "arguments": {"a": 1}}', "", [("f", {"a": 1}, False)], False),
    ("llama3_json", '{"name": "f", "parameters": {}}; {"name": "g"}', "", [("f", {}, False), ("g", {}, False)], False),
    ("llama3_json", '{"name": "f", "parameters": {}} and more', " and more", [("f", {}, False)], False),
    ("llama3_json", '{"answer": 42}', '{"answer": 42}', [], False),
    ("llama3_json", "<|python_tag|>brave_search.call(q='x')", "<|python_tag|>brave_search.call(q='x')", [], False),
    ("mistral", 'Hi[TOOL_CALLS][{"name": "f", "arguments": {}}, {"name": "g", "argu', "Hi", [("f", {}, False)], True),
    ("mistral", '[TOOL_CALLS]{"name": "f", "arguments": {"a": 1}} bye', " bye", [("f", {"a": 1}, False)], False),
    ("mistral", "[TOOL_CALLS] nothing here", "[TOOL_CALLS] nothing here", [], False),
    ("mistral", '[TOOL_CALLS][{"name": 3}]', "", [("", None, True)], False),
    ("mistral_v11", '[TOOL_CALLS]f{"a": 1}[TOOL_CALLS]g[ARGS]{}', "",
     [("f", {"a": 1}, False), ("g", {}, False)], False),
    ("mistral_v11", "[TOOL_CALLS]f[ARGS]{oops}", "", [("f", None, True)], False),
    ("mistral_v11", '[TOOL_CALLS]f[ARGS]{"a": ', "", [], True),
    ("granite", '<|tool_call|>[{"name": "f", "arguments": "{\\"a\\": 1}"}]', "", [("f", {"a": 1}, False)], False),
    ("phi4_mini", 'functools[{"name": "f"}] ok', " ok", [("f", {}, False)], False),
    ("functionary_v3", ">>>all\nHello>>>f\n{}>>>g\nnot json", "Hello", [("f", {}, False), ("g", None, True)], False),
    ("functionary_v3", '>>>f\n{"a": [1, ', "", [], True),
    ("json_envelope", '{"response": "caf\\u00e9 \\ud83d\\ude00"}', "café 😀", [], False),
    ("json_envelope", '{"response": {"n": 1}}', '{"n": 1}', [], False),
    ("json_envelope", "plain words", "plain words", [], False),
    ("json_envelope", '{"tool_calls": [{"name": "f", "arguments": {}}]', "", [("f", {}, False)], True),
    ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=a>\n1\n</tool_call>", "", [], True),
    ("qwen3_coder", "<tool_call>\n<parameter=a>\n1\n</parameter>\n</tool_call>", "", [("", None, True)], False),
    ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=a>\nx\n</parameter>\nzz</tool_call>", "",
     [("f", None, True)], False),
    ("qwen3_coder", "<tool_call>\n<function=f>\n<parameter=n>\nNaN\n</parameter>\n</function>\n</tool_call>",
     "", [("f", {"n": "NaN"}, False)], False),
    ("pythonic", "[f(1), g(a=true, b=None, c='x')]", "",
     [("f", None, True), ("g", {"a": True, "b": None, "c": "x"}, False)], False),
    ("pythonic", "[f(a=open('x'))]", "", [("f", None, True)], False),
    ("pythonic", "[f(a=1), g(b=", "", [("f", {"a": 1}, False)], True),
    ("pythonic", "[1, 2] are numbers", "[1, 2] are numbers", [], False),
    ("pythonic", "[f(a=float('nan'))]", "", [("f", None, True)], False),
    ("react", "Thought: hm\nAction: f\nAction Input: {\"a\": 1}\nDone.", "Thought: hmDone.",
     [("f", {"a": 1}, False)], False),
    ("react", "Action: f\nAction Input: Paris, France", "", [("f", None, True)], False),
    ("react", "Action: f\nAction Input: {\"a\"", "", [], True),
]  # fmt: skip


@pytest.mark.parametrize(("name", "text", "content", "calls", "unclosed"), MALFORMED)
def test_malformed_output_parses_as_documented(
    name: str, text: str, content: str, calls: list[tuple[str, Any, bool]], unclosed: bool
) -> None:
    fmt = get_format(name)
    parsed = fmt.parse(text)
    assert parsed.content == content
    assert parsed.unclosed is unclosed
    assert [(c.name, bool(c.error)) for c in parsed.calls] == [(n, e) for n, _, e in calls]
    for call, (_, arguments, _) in zip(parsed.calls, calls, strict=True):
        if arguments is not None:
            assert json.loads(call.arguments) == arguments
    assert stream(fmt, list(text)) == whole(fmt, text)


@pytest.mark.parametrize("name", FORMATS)
def test_garbage_never_raises(name: str) -> None:
    fmt = get_format(name)
    noise = ["[", "{", "}", "]", '"', "\\", "(", ")", ",", ";", "\n", "<tool_call>", "</tool_call>",
             "[TOOL_CALLS]", "[ARGS]", ">>>", "all\n", "Action: ", "\nAction Input:", "functools[",
             "<|tool_call|>", "<think>", "</think>", "<function=f>", "<parameter=a>", "\n</parameter>", "f(",
             "a=", "x", "1", '{"name"']  # fmt: skip

    @settings(max_examples=150, deadline=None)
    @given(st.lists(st.sampled_from(noise), max_size=25), st.data())
    def check(pieces: list[str], data: st.DataObject) -> None:
        text = "".join(pieces)
        assert stream(fmt, chunked(text, data)) == whole(fmt, text)

    check()


def test_render_drops_content_only_where_the_format_cannot_carry_it() -> None:
    call = _call("f", {})
    for name in WHOLE_OUTPUT:
        fmt = get_format(name)
        assert fmt.parse(fmt.render("ignored", [call])).content == ""
    assert get_format("json_envelope").render(None, []) == '{"response": ""}'


def test_text_streams_before_calls_close() -> None:
    fmt = get_format("mistral")
    parser = fmt.stream_parser()
    assert parser.feed("Let me check") == [TextDelta("Let me check")]
    assert parser.feed("[TOOL_CA") == []
    assert parser.feed('LLS][{"name": "f", "arguments": {}}') != []  # released before the list closes
    envelope = get_format("json_envelope").stream_parser()
    assert envelope.feed('{"response": "caf\\u00') == [TextDelta("caf")]
    assert envelope.feed("e9!") == [TextDelta("é!")]
