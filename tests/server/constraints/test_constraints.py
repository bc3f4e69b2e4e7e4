"""The constraint compiler against the real llguidance engine: each tool_choice mode accepts what
it must and rejects what it must, request errors name their cause, the cache hits, and every BFCL
function set compiles (or is refused with a reason) in every mode, as Lark and as GBNF.
"""

from __future__ import annotations

import re
from collections import Counter

import llguidance
import pytest

from server.constraints import (
    ConstraintSpec,
    cache_stats,
    clear_cache,
    compile_constraint,
    to_gbnf,
)
from server.errors import GatewayError, InvalidRequest, UnsupportedFeature
from server.toolcalls import ToolFormat, get_format
from server.types import ChoiceMode, JSONSchema, TextFormat, Tool, ToolChoice
from training.evaluation import bfcl

HERMES = get_format("hermes")
PLAIN = TextFormat()
MARKERS = ("<tool_call>", "</tool_call>")
SPECIALS = ("<|im_end|>", *MARKERS)


class _ByteTokens:
    """One token per byte plus the chat markers as special tokens: llguidance's TokenizerWrapper."""

    def __init__(self) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [b"\xff" + s.encode() for s in SPECIALS]
        self.special_token_ids = list(range(256, 256 + len(SPECIALS)))
        self.eos_token_id = 256
        self.bos_token_id = None

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


TOKENIZER = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokens()))
SPLIT = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")

WEATHER = Tool(
    "get_weather",
    "Weather for a city",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["c", "f"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
        },
        "required": ["city"],
        "additionalProperties": False,
    },
)
SEARCH = Tool(
    "search",
    parameters={"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
)
PING = Tool("ping")
EMPTY = Tool("noop", parameters={})
TOOLS = (WEATHER, SEARCH, PING, EMPTY)


def encode(text: str, special: bool) -> list[int]:
    """Bytes; the markers as their special tokens when `special`."""
    ids: list[int] = []
    for piece in SPLIT.split(text) if special else [text]:
        ids += [256 + SPECIALS.index(piece)] if piece in SPECIALS else list(piece.encode())
    return ids


def matches(lark: str | None, text: str, special: bool = True) -> bool:
    """Whether `text` is a complete output the grammar allows (None allows anything)."""
    if lark is None:
        return True
    matcher = llguidance.LLMatcher(TOKENIZER, lark, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(encode(text, special)) and matcher.is_accepting()


def spec(
    mode: str = "auto",
    *,
    name: str | None = None,
    parallel: bool = True,
    tools: tuple[Tool, ...] = TOOLS,
    text: TextFormat = PLAIN,
    special: bool = True,
) -> ConstraintSpec:
    markers = frozenset(SPECIALS) if special else frozenset({"<|im_end|>"})
    return ConstraintSpec(tools, ToolChoice(ChoiceMode(mode), name), parallel, text, markers)


def lark(s: ConstraintSpec) -> str | None:
    return compile_constraint(s, HERMES).lark


def call(name: str, args: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {args}}}\n</tool_call>'


PARIS = call("get_weather", '{"city": "Paris", "unit": "c", "days": 3}')
PING_CALL = call("ping", "{}")


# ---- modes ----


@pytest.mark.parametrize("special", [True, False], ids=["special", "literal"])
def test_auto_allows_text_or_text_then_calls(special: bool) -> None:
    g = lark(spec(special=special))
    for ok in [
        "",
        "It is sunny.",
        PARIS,
        "Checking.\n" + PARIS,
        PARIS + "\n" + PING_CALL,
        "a\n\nb\n" + PING_CALL,
    ]:
        assert matches(g, ok, special), ok
    for bad in [
        "a <tool_call> b",
        "Checking." + PARIS,
        PARIS + "\nthanks",
        PING_CALL + PING_CALL,
        PARIS[:-5],
    ]:
        assert not matches(g, bad, special), bad


def test_auto_literal_opener_is_never_text_even_with_special_markers() -> None:
    g = lark(spec(special=True))
    assert not matches(g, "see <tool_call> here", special=False)
    assert g is not None and '"<tool_call>"' in g  # the ban names the literal text
    literal = lark(spec(special=False)) or ""
    assert 'open: "<tool_call>"' in literal and "open: <tool_call>" in (g or "")


def test_auto_without_parallel_allows_one_call() -> None:
    g = lark(spec(parallel=False))
    assert matches(g, "Sure.\n" + PARIS)
    assert not matches(g, PARIS + "\n" + PING_CALL)


def test_none_bans_the_opener() -> None:
    g = lark(spec("none"))
    assert matches(g, "No tools needed.")
    assert not matches(g, PING_CALL)
    assert not matches(g, "text <tool_call> more", special=False)


def test_required_allows_calls_only() -> None:
    assert matches(lark(spec("required")), PARIS + "\n" + PING_CALL)
    assert not matches(lark(spec("required")), "It is sunny.")
    assert not matches(lark(spec("required")), "Checking.\n" + PARIS)
    assert not matches(lark(spec("required", parallel=False)), PARIS + "\n" + PING_CALL)
    assert not matches(lark(spec("required")), "")


def test_named_allows_that_function_once() -> None:
    g = lark(spec("named", name="search"))
    assert matches(g, call("search", '{"q": "llamas"}'))
    for bad in [PARIS, call("search", '{"q": "a"}') + "\n" + call("search", '{"q": "b"}'), "Sure."]:
        assert not matches(g, bad), bad


def test_end_of_generation_is_impossible_inside_a_call() -> None:
    matcher = llguidance.LLMatcher(TOKENIZER, lark(spec()) or "", log_level=0)
    assert matcher.consume_tokens(encode(PARIS[:-12], True))
    assert not matcher.is_accepting()


# ---- arguments ----


@pytest.mark.parametrize(
    "args",
    [
        '{"city": 3}',  # wrong type
        '{"unit": "c"}',  # missing required
        '{"city": "Paris", "wind": true}',  # additionalProperties false
        '{"city": "Paris", "unit": "k"}',  # enum
        '{"city": "Paris", "days": 30}',  # maximum
        '{"city":"Paris"}',  # layout: ": " pinned
        '{"city": "Paris",\t"days": 3}',  # layout: ", " pinned
        '{ "city": "Paris"}',  # no free whitespace
        '{"days": 3, "city": "Paris"}',  # property order is the schema's
    ],
)
def test_arguments_must_match_the_schema_and_layout(args: str) -> None:
    assert not matches(lark(spec()), call("get_weather", args))


def test_arguments_in_json_dumps_layout_pass() -> None:
    g = lark(spec())
    assert matches(g, call("get_weather", '{"city": "Paris"}'))
    assert matches(g, call("search", '{"q": "caf\\u00e9 ol\\u00e9"}'))
    assert matches(g, call("search", '{"q": "café"}'))


def test_undeclared_arguments_are_refused_unless_the_schema_allows_them() -> None:
    """Objects decode closed (constraints/closed.py), nested ones too; a schema that admits extra
    properties is left as written."""
    nested = {"type": "object", "properties": {"where": {"type": "object", "properties": {"city": {}}}}}
    tools = (
        SEARCH,
        Tool("nested", parameters=nested),
        Tool("open", parameters={**SEARCH.parameters, "additionalProperties": True}),
        Tool("typed", parameters={**SEARCH.parameters, "additionalProperties": {"type": "integer"}}),
    )
    g = lark(spec(tools=tools))
    assert not matches(g, call("search", '{"q": "x", "extra": [1, {"a": null}]}'))
    assert not matches(g, call("nested", '{"where": {"city": "Rome", "country": "IT"}}'))
    assert matches(g, call("nested", '{"where": {"city": "Rome"}}'))
    assert matches(g, call("open", '{"q": "x", "extra": [1, {"a": null}]}'))
    assert matches(g, call("typed", '{"q": "x", "n": 3}'))
    assert not matches(g, call("typed", '{"q": "x", "n": "3"}'))


def test_keyword_names_as_property_names_are_fine() -> None:
    props = {"contentEncoding": {"type": "string"}, "not": {"type": "integer"}}
    tool = Tool("f", parameters={"type": "object", "properties": props})
    assert matches(lark(spec(tools=(tool,))), call("f", '{"contentEncoding": "gzip", "not": 1}'))


def test_tools_without_parameters_take_an_empty_object() -> None:
    for tool in (PING, EMPTY, Tool("props", parameters={"type": "object", "properties": {}})):
        assert matches(lark(spec("named", name=tool.name, tools=(WEATHER, tool))), call(tool.name, "{}"))


# ---- text formats ----


def test_json_object_text() -> None:
    g = lark(spec(text=TextFormat("json_object")))
    assert matches(g, '{"answer": 42}')
    assert matches(g, '{"answer": 42}\n' + PING_CALL)
    assert not matches(g, "plain words")
    assert not matches(g, '{"answer":42}')
    assert matches(lark(spec(tools=(), text=TextFormat("json_object"))), '{"a": [1, 2]}')


def test_json_schema_text() -> None:
    schema: JSONSchema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
    }
    g = lark(spec("none", text=TextFormat("json_schema", schema)))
    assert matches(g, '{"n": 1}')
    assert not matches(g, '{"n": "one"}')
    assert not matches(g, PING_CALL)


def test_plain_text_without_tools_is_unconstrained() -> None:
    assert compile_constraint(spec(tools=()), HERMES).lark is None
    assert compile_constraint(spec("none", tools=()), HERMES).key == "unconstrained"
    assert to_gbnf(spec(tools=()), HERMES) == ""


# ---- request errors ----


def test_unsupported_keyword_is_refused_naming_keyword_and_tool() -> None:
    tool = Tool(
        "tagger",
        parameters={
            "type": "object",
            "properties": {"tags": {"type": "array", "uniqueItems": True}},
        },
    )
    with pytest.raises(UnsupportedFeature) as caught:
        compile_constraint(spec(tools=(WEATHER, tool)), HERMES)
    assert "'uniqueItems'" in caught.value.message and "tagger" in caught.value.message
    assert caught.value.param == "tools[1].function.parameters"
    assert caught.value.status == 400


@pytest.mark.parametrize(
    ("mode", "name"), [("auto", None), ("required", None), ("named", "get_weather"), ("none", None)]
)
@pytest.mark.parametrize("fmt", ["hermes", "qwen3_coder"])
def test_a_tool_the_mode_never_calls_is_still_checked(mode: str, name: str | None, fmt: str) -> None:
    """The same tools list is refused whatever tool_choice says: a named choice of another tool
    or `none` leaves the bad tool out of the grammar, yet the request is still a 400."""
    keys = Tool("keys", parameters={"type": "object", "propertyNames": {"maxLength": 3}})
    with pytest.raises(UnsupportedFeature) as caught:
        compile_constraint(spec(mode, name=name, tools=(keys, WEATHER)), get_format(fmt))
    assert "'propertyNames'" in caught.value.message and caught.value.param == "tools[0].function.parameters"


@pytest.mark.parametrize(
    ("schema", "error"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "dict"}}},
            InvalidRequest,
        ),  # not Draft 2020-12
        ({"type": "object", "required": "a"}, InvalidRequest),
        ({"type": "string"}, InvalidRequest),  # arguments are an object
        ({"type": "object", "x-guidance": {"lenient": True}}, UnsupportedFeature),
        (
            {"type": "object", "properties": {"d": {"type": "string", "format": "zodiac"}}},
            UnsupportedFeature,
        ),
        ({"type": "object", "properties": {"n": {"not": {"type": "null"}}}}, UnsupportedFeature),
        # annotations in 2020-12 that llguidance ignores, yet they describe the value
        (
            {
                "type": "object",
                "properties": {"png": {"type": "string", "contentEncoding": "base64"}},
            },
            UnsupportedFeature,
        ),
    ],
)
def test_bad_schemas_are_refused(schema: JSONSchema, error: type[GatewayError]) -> None:
    with pytest.raises(error) as caught:
        compile_constraint(spec(tools=(Tool("f", parameters=schema),)), HERMES)
    assert type(caught.value) is error and "tools[0]" in caught.value.message


def test_request_errors() -> None:
    with pytest.raises(InvalidRequest, match="unique"):
        compile_constraint(spec(tools=(PING, PING)), HERMES)
    with pytest.raises(InvalidRequest, match="declared: get_weather, search, ping, noop"):
        compile_constraint(spec("named", name="get_time"), HERMES)
    with pytest.raises(InvalidRequest, match="at least one tool"):
        compile_constraint(spec("required", tools=()), HERMES)
    with pytest.raises(InvalidRequest, match="json_schema"):
        compile_constraint(spec(text=TextFormat("yaml")), HERMES)
    with pytest.raises(InvalidRequest, match="quotes"):
        compile_constraint(spec(tools=(Tool('say"hi'),)), HERMES)


# ---- cache ----


def test_second_compile_is_a_cache_hit() -> None:
    clear_cache()
    first = compile_constraint(spec(), HERMES)
    second = compile_constraint(spec(), HERMES)
    assert not first.cached and first.compile_ms > 0
    assert second.cached and second.compile_ms == 0 and second.lark == first.lark and second.key == first.key
    assert (cache_stats().hits, cache_stats().misses) == (1, 1)


def test_property_order_is_part_of_the_cache_key() -> None:
    ab = Tool(
        "f",
        parameters={
            "type": "object",
            "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
        },
    )
    ba = Tool(
        "f",
        parameters={
            "type": "object",
            "properties": {"b": {"type": "string"}, "a": {"type": "string"}},
        },
    )
    first, second = (compile_constraint(spec(tools=(t,)), HERMES) for t in (ab, ba))
    assert first.key != second.key and not second.cached


# ---- BFCL function sets ----

BFCL_CATEGORIES = (
    "simple_python",
    "multiple",
    "parallel",
    "parallel_multiple",
    "live_simple",
    "live_multiple",
)


def bfcl_sets() -> list[list[Tool]]:
    sets = bfcl.function_sets(BFCL_CATEGORIES)
    return sets[::3]


def test_bfcl_function_sets_compile_in_every_mode() -> None:
    sets = bfcl_sets()
    outcomes: Counter[str] = Counter()
    for tools in sets:
        for mode, name in (
            ("auto", None),
            ("required", None),
            ("none", None),
            ("named", tools[0].name),
        ):
            for parallel in (True, False):
                outcomes[_compile_outcome(spec(mode, name=name, parallel=parallel, tools=tuple(tools)))] += 1
    assert len(sets) >= 200
    assert outcomes["ok"] >= 0.97 * sum(outcomes.values()), outcomes
    assert set(outcomes) <= {"ok", "UnsupportedFeature", "InvalidRequest"}, outcomes


def _compile_outcome(s: ConstraintSpec) -> str:
    try:
        assert compile_constraint(s, HERMES).lark is not None
    except (UnsupportedFeature, InvalidRequest) as error:
        assert error.param and error.param.startswith("tools["), error.message
        return type(error).__name__
    return "ok"


def test_bfcl_gbnf_parses_in_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    parsed = refused = 0
    for tools in bfcl_sets():
        for mode in ("auto", "required"):
            try:
                gbnf = to_gbnf(spec(mode, tools=tuple(tools), special=False), HERMES)
            except (UnsupportedFeature, InvalidRequest):
                refused += 1
                continue
            sampler = llama_cpp.llama_sampler_init_grammar(None, gbnf.encode(), b"root")
            assert sampler, gbnf
            llama_cpp.llama_sampler_free(sampler)
            parsed += 1
    assert parsed >= 0.95 * (parsed + refused)


# ---- GBNF ----

CITY = Tool(
    "city_info",
    parameters={
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 8},
            "unit": {"enum": ["c", "f"]},
            "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
            "home": {"$ref": "#/$defs/place"},
        },
        "required": ["unit"],
        "$defs": {"place": {"type": "object", "properties": {"lat": {"type": "number"}}}},
    },
)
GBNF_TEXTS = [
    "Plain answer.",
    "a <tool_call> b",
    call("city_info", '{"unit": "c"}'),
    "Sure.\n" + call("city_info", '{"city": "Paris", "unit": "f", "tags": ["x"]}'),
    call("city_info", '{"city": "Paris", "unit": "c", "home": {"lat": 1.5, "x": [1, null]}}'),
    call("city_info", '{"unit": "c", "city": "Paris"}'),  # order
    call("city_info", '{"city": "Marseille-X", "unit": "c"}'),  # maxLength
    call("city_info", '{"unit": "k"}'),
    call("city_info", '{"unit": "c", "tags": []}'),
    call("city_info", '{"unit": "c", "unit2": 1}'),  # undeclared key: allowed
    call("city_info", '{"unit": "c", "unit": "f"}'),  # a declared key again: refused
    call("city_info", '{"unit":"c"}'),
    call("ping", "{}") + "\n" + call("ping", "{}"),
]


@pytest.mark.parametrize("mode", ["auto", "required", "none"])
def test_gbnf_accepts_exactly_what_the_lark_accepts(mode: str) -> None:
    from llguidance.gbnf_to_lark import gbnf_to_lark

    s = spec(mode, tools=(CITY, PING), special=False)
    as_lark = gbnf_to_lark(to_gbnf(s, HERMES))  # llguidance's own GBNF reader
    for text in GBNF_TEXTS:
        assert matches(as_lark, text, False) == matches(lark(s), text, False), text


def test_gbnf_refuses_what_it_cannot_express() -> None:
    tool = Tool("f", parameters={"type": "object", "properties": {"d": {"type": "string", "pattern": "^a"}}})
    with pytest.raises(UnsupportedFeature, match="'pattern' cannot be expressed in GBNF"):
        to_gbnf(spec(tools=(tool,)), HERMES)
    assert compile_constraint(spec(tools=(tool,)), HERMES).lark is not None  # Lark enforces it


# ---- other tool-call formats (their envelopes per mode: tests/server/constraints/test_grammar_files.py) ----

PYTHONIC, QWEN3, JSON_ENVELOPE = (get_format(n) for n in ("pythonic", "qwen3_coder", "json_envelope"))
ORDER = Tool(
    "order",
    parameters={
        "type": "object",
        "properties": {
            "item": {"type": "string", "maxLength": 5},
            "qty": {"type": "integer", "minimum": 1},
            "gift": {"type": "boolean"},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 2},
            "meta": {"type": "object", "properties": {"k": {"type": "null"}}},
        },
        "required": ["item", "qty"],
    },
)


def lark_of(fmt: ToolFormat, tools: tuple[Tool, ...], mode: str = "required") -> str | None:
    return compile_constraint(spec(mode, tools=tools, special=False), fmt).lark


def test_pythonic_arguments_are_python_literals_in_schema_order() -> None:
    g = lark_of(PYTHONIC, (ORDER, PING))
    for ok in [
        '[order(item="tea", qty=2)]',
        '[order(item="tea", qty=2, gift=True, note=None, tags=["a"]), ping()]',
        '[order(item="t", qty=1, note="x", meta={"k": None})]',
        '[order(item="\\u00e9", qty=1, tags=[])]',
    ]:
        assert matches(g, ok, False), ok
    for bad in [
        '[order(item="teapot", qty=2)]',
        '[order(item="tea", qty=0)]',
        '[order(qty=2, item="tea")]',
        '[order(item="tea", qty=2, gift=true)]',
        '[order(item="tea")]',
        "[order(item='tea', qty=2)]",
        '[order(item="tea", qty=2, tags=["a", "b", "a"])]',
        '[order(item="a\\/b", qty=1)]',
        '[order(item="tea", qty=2, colour="red")]',  # undeclared keyword: objects decode closed
        '[order(item="t", qty=1, meta={"k": None, "x": 1})]',
    ]:
        assert not matches(g, bad, False), bad


def test_qwen3_coder_writes_strings_raw_or_quoted_and_the_rest_as_json() -> None:
    g = lark_of(QWEN3, (ORDER,))

    def call(params: str) -> str:
        return f"<tool_call>\n<function=order>\n{params}</function>\n</tool_call>"

    def param(key: str, value: str) -> str:
        return f"<parameter={key}>\n{value}\n</parameter>\n"

    item, qty = param("item", "tea"), param("qty", "2")
    for ok in [item + qty, param("item", '"12"') + qty, item + qty + param("note", "null"), item + qty
               + param("note", "some </tool_call> text") + param("tags", '["a", "b"]')]:  # fmt: skip
        assert matches(g, call(ok), False), ok
    for bad in [param("item", "teapot") + qty, param("item", "12") + qty, item + param("qty", "0"),
                item + param("qty", '"2"'), qty + item, item + qty + param("note", "true"),
                item + qty + param("colour", "red")]:  # fmt: skip
        assert not matches(g, call(bad), False), bad


@pytest.mark.parametrize(
    ("fmt_name", "tool", "where", "param"),
    [
        ("functionary_v3", Tool("all"), "'all'", "tools[1].function.name"),
        ("pythonic", Tool("get-weather"), "Python identifiers", "tools[1].function.name"),
        ("pythonic", Tool("f", parameters={"type": "object", "properties": {"a-b": {}}}), "'a-b'",
         "tools[1].function.parameters"),
        ("pythonic", Tool("f", parameters={"type": "object", "properties": {"a": {"allOf": [{}]}}}), "'allOf'",
         "tools[1].function.parameters"),
        ("qwen3_coder", Tool("f", parameters={"type": "object", "properties": {"a": {"pattern": "x"}}}),
         "'pattern'", "tools[1].function.parameters"),
        ("qwen3_coder", Tool("f", parameters={"type": "object", "minProperties": 1}), "'minProperties'",
         "tools[1].function.parameters"),
    ],
)  # fmt: skip
def test_formats_refuse_what_they_cannot_express(fmt_name: str, tool: Tool, where: str, param: str) -> None:
    with pytest.raises(UnsupportedFeature) as caught:
        compile_constraint(spec(tools=(PING, tool)), get_format(fmt_name))
    assert where in caught.value.message and tool.name in caught.value.message
    assert caught.value.param == param


def test_gbnf_of_argument_rules_translates_or_refuses() -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    for fmt, tools in ((PYTHONIC, (SEARCH, PING, CITY)), (QWEN3, (SEARCH, PING))):
        gbnf = to_gbnf(spec(tools=tools, special=False), fmt)
        sampler = llama_cpp.llama_sampler_init_grammar(None, gbnf.encode(), b"root")
        assert sampler, gbnf
        llama_cpp.llama_sampler_free(sampler)
    with pytest.raises(UnsupportedFeature, match="cannot be expressed in GBNF"):
        to_gbnf(spec(tools=(ORDER,), special=False), QWEN3)  # a raw string with maxLength needs Lark's `&`


def test_text_answers_that_would_read_as_calls_are_refused() -> None:
    llama3 = lark_of(get_format("llama3_json"), TOOLS, "none")
    assert matches(llama3, "Sure [x] {y}", False)
    assert not matches(llama3, ' {"x": 1}', False) and not matches(llama3, "<|python_tag|>", False)
    pythonic = lark_of(PYTHONIC, TOOLS, "auto")
    assert matches(pythonic, "Sure [x]", False) and not matches(pythonic, "\n[x]", False)
    functionary = lark_of(get_format("functionary_v3"), TOOLS, "auto")
    assert matches(functionary, ">>>all\nok\n>>>ping\n{}", False)
    assert not matches(functionary, ">>>all\nok>>>>ping\n{}", False)  # "ok>" + ">>>" would misparse


def test_json_answers_fit_the_formats_text_branch() -> None:
    text = TextFormat("json_object")
    g = compile_constraint(spec("auto", text=text, special=False), JSON_ENVELOPE).lark
    assert matches(g, '{"response": {"answer": 42}}', False)
    assert matches(g, '{"tool_calls": [{"name": "ping", "arguments": {}}]}', False)
    assert not matches(g, '{"response": "plain"}', False)
    functionary = compile_constraint(spec("none", text=text, special=False), get_format("functionary_v3")).lark
    assert matches(functionary, '>>>all\n{"a": 1}', False) and not matches(functionary, '{"a": 1}', False)


def test_bfcl_function_sets_compile_for_the_argument_syntaxes() -> None:
    outcomes: Counter[str] = Counter()
    for tools in bfcl_sets()[::8]:
        for fmt in (PYTHONIC, QWEN3):
            try:
                assert compile_constraint(spec("auto", tools=tuple(tools)), fmt).lark
                outcomes["ok"] += 1
            except (UnsupportedFeature, InvalidRequest) as error:
                assert error.param and error.param.startswith("tools["), error.message
                outcomes[type(error).__name__] += 1
    assert outcomes["ok"] >= 0.8 * sum(outcomes.values()), outcomes
