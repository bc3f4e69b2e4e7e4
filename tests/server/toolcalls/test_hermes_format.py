"""The Hermes format: parse(render(x)) == x, streaming equals whole-text parsing, and
malformed output is parsed as documented, never raised."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from server.toolcalls import CallDone, TextDelta, get_format
from server.types import ToolCall

fmt = get_format("hermes")

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.text(max_size=12)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
arguments = st.dictionaries(st.text(max_size=10), json_values, max_size=4)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
calls = st.lists(st.builds(lambda n, a: ToolCall(n, json.dumps(a, ensure_ascii=False)), names, arguments), max_size=3)
# Content that a model could write before a call: anything but the opener itself.
contents = st.text(max_size=40).filter(lambda t: "<tool_call>" not in t and "</tool_call>" not in t)


@settings(max_examples=300, deadline=None)
@given(contents, calls)
def test_parse_inverts_render(content: str, tool_calls: list[ToolCall]) -> None:
    content = content.rstrip("\n") if tool_calls else content
    parsed = fmt.parse(fmt.render(content, tool_calls))
    assert parsed.content == content
    assert [(c.name, json.loads(c.arguments)) for c in parsed.calls] == [
        (c.name, json.loads(c.arguments)) for c in tool_calls
    ]
    assert all(c.error is None for c in parsed.calls)
    assert not parsed.unclosed


def _stream(text: str, chunks: list[str]) -> tuple[str, list[str], bool]:
    parser = fmt.stream_parser()
    events = [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()
    content = "".join(e.text for e in events if isinstance(e, TextDelta))
    found = [e.call.arguments for e in events if isinstance(e, CallDone)]
    return content, found, parser.unclosed


@settings(max_examples=200, deadline=None)
@given(contents, calls, st.data())
def test_stream_parse_equals_parse_in_any_chunking(
    content: str, tool_calls: list[ToolCall], data: st.DataObject
) -> None:
    text = fmt.render(content, tool_calls) + data.draw(st.sampled_from(["", "\ntrailing", "<tool_ca"]))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    whole = fmt.parse(text)
    assert _stream(text, chunks) == (whole.content, [c.arguments for c in whole.calls], whole.unclosed)
    assert _stream(text, list(text)) == _stream(text, [text])


def test_text_streams_before_the_call_closes() -> None:
    parser = fmt.stream_parser()
    assert parser.feed("Let me check") == [TextDelta("Let me check")]
    assert parser.feed("\n<tool_") == []  # the newline may separate text from a call: held
    assert parser.feed('call>\n{"name": "f", "arguments": {}}') == []
    [done] = parser.feed("\n</tool_call>")
    assert isinstance(done, CallDone) and done.call.name == "f" and done.call.arguments == "{}"


def test_unclosed_call_is_not_a_call_nor_content() -> None:
    parsed = fmt.parse('Sure.\n<tool_call>\n{"name": "f", "argu')
    assert parsed.content == "Sure." and parsed.calls == () and parsed.unclosed


def test_broken_json_is_reported_on_the_call() -> None:
    [call] = fmt.parse('<tool_call>\n{"name": "f", "arguments": {"a": }\n</tool_call>').calls
    assert call.name == "f" and call.error and "not JSON" in call.error


def test_missing_or_null_arguments_mean_empty_object() -> None:
    parsed = fmt.parse(
        '<tool_call>\n{"name": "ping"}\n</tool_call>\n<tool_call>\n{"name": "p2", "arguments": null}\n</tool_call>'
    )
    assert [(c.name, c.arguments) for c in parsed.calls] == [("ping", "{}"), ("p2", "{}")]


def test_stringified_arguments_are_normalised() -> None:
    [call] = fmt.parse('<tool_call>\n{"name": "f", "arguments": "{\\"x\\": 1}"}\n</tool_call>').calls
    assert call.arguments == '{"x": 1}' and call.error is None


def test_text_after_a_call_is_kept_as_content() -> None:
    parsed = fmt.parse('<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>\nDone.')
    assert parsed.content == "Done." and len(parsed.calls) == 1


def test_close_marker_inside_an_argument_string_does_not_end_the_call() -> None:
    text = '<tool_call>\n{"name": "note", "arguments": {"text": "a </tool_call> b \\" </tool_call>"}}\n</tool_call>'
    [call] = fmt.parse(text).calls
    assert call.error is None and json.loads(call.arguments) == {"text": 'a </tool_call> b " </tool_call>'}
    assert _stream(text, list(text))[1] == [call.arguments]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=30), st.data())
def test_any_string_argument_round_trips(value: str, data: st.DataObject) -> None:
    call = ToolCall("f", json.dumps({"v": value}, ensure_ascii=False))
    text = fmt.render(None, [call])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=6)))
    chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert json.loads(_stream(text, chunks)[1][0]) == {"v": value}
