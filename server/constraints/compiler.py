"""The constraint compiler: tools x tool_choice x parallel x text format x tool-call format -> one
llguidance Lark grammar, validated by llguidance itself and cached. It owns the meaning of each
tool_choice mode (DESIGN decision 2) and the pinned JSON layout; it knows nothing of HTTP, engines
or tokenizers (special tokens arrive as texts), and a format only through its `Envelope` and
`call_body`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from pathlib import Path

import jsonschema
import llguidance

from server.errors import InvalidRequest, UnsupportedFeature
from server.toolcalls.base import ToolFormat
from server.types import ChoiceMode, JSONSchema, TextFormat, Tool, ToolChoice

# The repository's grammars/ folder; an installed package (a container) points here instead.
GRAMMARS_DIR = Path(os.environ.get("CALLGATE_GRAMMARS", Path(__file__).resolve().parents[2] / "grammars"))
TEXT_KINDS = ("text", "json_object", "json_schema")
TEXT_PARAM = "response_format.json_schema.schema"

# Python's json.dumps layout (", " and ": ", no other whitespace): free whitespace let a random
# model fill max_tokens with tabs. \uXXXX escapes stay allowed: json.dumps writes them by default.
JSON_LAYOUT: dict[str, object] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
    "json_allow_general_unicode_escapes": True,
}
# Draft 2020-12 validation keywords, to name the culprit in llguidance's messages.
SCHEMA_KEYWORDS = frozenset(jsonschema.Draft202012Validator.VALIDATORS) | {
    "then", "else", "minContains", "maxContains", "$dynamicAnchor",
}  # fmt: skip
_ALIASES = {
    "patternProperty": "patternProperties",
    "Resource": "$ref",
    "min/maxProperties": "minProperties",
}
# Describe values, yet llguidance ignores them (annotations in 2020-12): refuse, never drop.
_IGNORED = frozenset({"contentEncoding", "contentMediaType", "contentSchema"})
_ONE = ("items", "additionalProperties", "contains", "propertyNames", "not", "if", "then", "else",
        "unevaluatedItems", "unevaluatedProperties", "contentSchema")  # fmt: skip
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_RESERVED = "'x-guidance' is reserved: the gateway pins the JSON layout; remove it"
_WORD_RE = re.compile(r"[$\w/]+")
_META = jsonschema.Draft202012Validator(jsonschema.Draft202012Validator.META_SCHEMA)


@dataclass(frozen=True)
class ConstraintSpec:
    tools: tuple[Tool, ...]
    choice: ToolChoice
    parallel: bool  # parallel_tool_calls
    text: TextFormat
    special_tokens: frozenset[str]  # texts of the vocabulary's special tokens (from the engine)


@dataclass(frozen=True)
class Constraint:
    lark: str | None  # None: unconstrained
    key: str  # stable hash of the lark, for caches and logs
    compile_ms: float  # build + validate; 0 on a cache hit
    cached: bool


@dataclass(frozen=True)
class Plan:
    """What the grammar allows, format aside; shared by the Lark and GBNF emitters."""

    tools: tuple[Tool, ...]  # callable tools: all, the named one, or none
    text: bool  # free text (or JSON text) may be answered
    many: bool  # more than one call


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int
    capacity: int


class _LRU:
    """A small thread-safe LRU: specs hold dicts (unhashable), so they are keyed by digest."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.hits = self.misses = 0
        self._items: OrderedDict[str, Constraint] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> Constraint | None:
        with self._lock:
            found = self._items.get(key)
            if found is None:
                self.misses += 1
                return None
            self.hits += 1
            self._items.move_to_end(key)
            return found

    def put(self, key: str, value: Constraint) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._items), self.capacity)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.hits = self.misses = 0


_CACHE = _LRU(512)


def cache_stats() -> CacheStats:
    return _CACHE.stats()


def clear_cache() -> None:
    """Forget compiled grammars and memoized schema checks (for cold-start measurements)."""
    _CACHE.clear()
    _meta_problem.cache_clear()


def compile_constraint(spec: ConstraintSpec, fmt: ToolFormat) -> Constraint:
    """The grammar enforcing `spec` in `fmt`'s layout; raises InvalidRequest / UnsupportedFeature."""
    key = cache_key(spec, fmt)
    found = _CACHE.get(key)
    if found is not None:
        return replace(found, compile_ms=0.0, cached=True)
    start = time.perf_counter()
    shape = plan(spec)
    lark = None
    if shape is not None:
        lark = emit_lark(shape, spec, fmt)
        validate_lark(lark, shape, spec)
    ms = (time.perf_counter() - start) * 1e3
    built = Constraint(lark, lark_key(lark), ms, cached=False)
    _CACHE.put(key, built)
    return built


def cache_key(spec: ConstraintSpec, fmt: ToolFormat) -> str:
    """Digest of what the grammar depends on. Key order is kept: it fixes the property order."""
    env = fmt.envelope
    doc = [
        fmt.name, env.grammar_file, env.open, env.close,
        env.open in spec.special_tokens, env.close in spec.special_tokens,
        [[t.name, t.parameters] for t in spec.tools],
        spec.choice.mode.value, spec.choice.name, spec.parallel, spec.text.kind, spec.text.schema,
    ]  # fmt: skip
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def lark_key(lark: str | None) -> str:
    return "unconstrained" if lark is None else hashlib.sha256(lark.encode()).hexdigest()[:16]


@cache
def load_grammar_file(name: str) -> str:
    """The one loader of grammars/ files (read once each)."""
    return (GRAMMARS_DIR / name).read_text(encoding="utf-8")


# ---- request checks and the mode plan (shared with gbnf.py) ----


def plan(spec: ConstraintSpec) -> Plan | None:
    """Check the request and decide what the grammar allows; None means unconstrained."""
    check_request(spec)
    mode = spec.choice.mode
    if mode is ChoiceMode.NONE or not spec.tools:
        return None if spec.text.kind == "text" and not spec.tools else Plan((), True, False)
    if mode is ChoiceMode.NAMED:
        return Plan(tuple(t for t in spec.tools if t.name == spec.choice.name), False, False)
    return Plan(spec.tools, mode is ChoiceMode.AUTO, spec.parallel)


def check_request(spec: ConstraintSpec) -> None:
    _check_text_format(spec.text)
    seen: dict[str, int] = {}
    for i, tool in enumerate(spec.tools):
        _check_name(i, tool.name, seen)
        _check_tool_schema(i, tool)
    _check_choice(spec.choice, [t.name for t in spec.tools])


def _check_text_format(text: TextFormat) -> None:
    if text.kind not in TEXT_KINDS:
        raise InvalidRequest(
            f"response_format type {text.kind!r} is not supported; use one of {', '.join(TEXT_KINDS)}",
            param="response_format",
        )
    if text.kind == "json_schema":
        if not isinstance(text.schema, dict):
            raise InvalidRequest("response_format json_schema needs a `schema` object", param=TEXT_PARAM)
        _check_schema(text.schema, TEXT_PARAM, TEXT_PARAM)


def _check_name(i: int, name: str, seen: dict[str, int]) -> None:
    param = f"tools[{i}].function.name"
    if not name or json.dumps(name, ensure_ascii=False)[1:-1] != name:
        raise InvalidRequest(
            f"tools[{i}] has name {name!r}; a tool name must be non-empty and free of quotes, "
            "backslashes and control characters (for example ^[a-zA-Z0-9_-]{1,64}$)",
            param=param,
        )
    if name in seen:
        raise InvalidRequest(
            f"tools[{i}] and tools[{seen[name]}] are both named {name!r}; tool names must be unique",
            param=param,
        )
    seen[name] = i


def _check_choice(choice: ToolChoice, names: list[str]) -> None:
    if choice.mode in (ChoiceMode.REQUIRED, ChoiceMode.NAMED) and not names:
        raise InvalidRequest(
            f"tool_choice {choice.label!r} needs at least one tool in `tools`; "
            "send tools or use tool_choice 'auto' / 'none'",
            param="tool_choice",
        )
    if choice.mode is ChoiceMode.NAMED and choice.name not in names:
        raise InvalidRequest(
            f"tool_choice names function {choice.name!r}, which is not a declared tool; declared: {', '.join(names)}",
            param="tool_choice",
        )


def _check_tool_schema(i: int, tool: Tool) -> None:
    """A valid Draft 2020-12 schema of a JSON object, with no layout options of its own."""
    param = f"tools[{i}].function.parameters"
    schema = tool_schema(tool)
    _check_schema(schema, f"{param} ({tool.name})", param)
    if schema["type"] != "object":
        raise InvalidRequest(
            f'{param} ({tool.name}) must describe a JSON object ("type": "object"), got type {schema["type"]!r}',
            param=param,
        )


def _check_schema(schema: JSONSchema, where: str, param: str) -> None:
    """Draft 2020-12 valid, no layout options of its own, no keyword llguidance would ignore."""
    if "x-guidance" in schema:
        raise UnsupportedFeature(f"{where}: {_RESERVED}", param=param)
    problem = _meta_problem(json.dumps(schema, sort_keys=True, default=repr))
    if problem is not None:
        raise InvalidRequest(f"{where} is not a valid JSON Schema (Draft 2020-12) {problem}", param=param)
    ignored = sorted(_IGNORED & _keywords_in(schema))
    if ignored:
        raise UnsupportedFeature(
            f"{where}: JSON Schema keyword {', '.join(map(repr, ignored))} cannot be enforced by "
            "the grammar engine (it would be silently ignored); remove it",
            param=param,
        )


def _keywords_in(schema: JSONSchema) -> set[str]:
    """Keywords used anywhere in the schema (at schema positions, not property names)."""
    found: set[str] = set()
    stack: list[object] = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found |= node.keys()
            stack += [node[k] for k in _ONE if k in node]
            stack += [s for k in _MANY for s in node.get(k, [])]
            stack += [s for k in _MAP for s in node.get(k, {}).values()]
    return found


@lru_cache(maxsize=4096)
def _meta_problem(schema_json: str) -> str | None:
    """Memoized: the meta-schema check costs about 1.3 ms a schema, more than llguidance."""
    error = jsonschema.exceptions.best_match(_META.iter_errors(json.loads(schema_json)))
    if error is None:
        return None
    return f"at {'/'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"


# ---- Lark emission ----


def emit_lark(shape: Plan, spec: ConstraintSpec, fmt: ToolFormat) -> str:
    """The Lark text: start, text terminals, then the format's envelope file and call bodies."""
    parts = ["%llguidance {}", _start_rule(shape), _text_rules(spec, fmt, shape)]
    if shape.tools:
        parts += [load_grammar_file(fmt.envelope.grammar_file), _envelope_rules(spec, fmt, shape)]
        parts += _call_body_rules(shape.tools, fmt)
    return "\n".join(parts) + "\n"


def _start_rule(shape: Plan) -> str:
    alternatives = ["text"] if shape.text else []
    if shape.tools:
        alternatives.append("calls" if shape.many else "call")
    return "start: " + " | ".join(alternatives)


def _text_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> str:
    if not shape.text:
        return ""
    if spec.text.kind != "text":
        return f"text: %json {layout_json(text_schema(spec.text))}"
    opener = lark_literal(fmt.envelope.open)
    return (
        "text: TEXT\n"
        "ANY_TEXT: /(?s:.*)/\n"
        f"TEXT: ANY_TEXT & ~(ANY_TEXT {opener} ANY_TEXT)\n"
        f"TEXT_NE: /(?s:.+)/ & ~(ANY_TEXT {opener} ANY_TEXT)"
    )


def _envelope_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> str:
    env = fmt.envelope
    rules = [f"open: {marker(env.open, spec)}", f"close: {marker(env.close, spec)}"]
    return "\n".join(rules + _lead_rules(spec, fmt, shape))


def _lead_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> list[str]:
    """`lead`: the first opener and, in auto mode, the text before it."""
    opener = fmt.envelope.open
    if not shape.text:
        return ["lead: open"]
    if spec.text.kind != "text":
        return ["lead: open | text TEXT_SEP open"]
    if opener in spec.special_tokens:
        return ["lead: open | LEAD_TEXT open", "LEAD_TEXT: TEXT_NE TEXT_SEP"]
    # One lexeme from text to opener: as two, the greedy text lexeme would eat the opener.
    return [
        "lead: open | LEAD_TEXT_OPEN",
        f"LEAD_TEXT_OPEN: TEXT_NE TEXT_SEP {lark_literal(opener)}",
    ]


def _call_body_rules(tools: tuple[Tool, ...], fmt: ToolFormat) -> list[str]:
    names = [f"call_{i}" for i in range(len(tools))]
    rules = ["call_body: " + " | ".join(names)]
    for i, tool in enumerate(tools):
        rules.append(f"call_{i}: {fmt.call_body(tool, f'args_{i}')}")
        rules.append(f"args_{i}: %json {layout_json(tool_schema(tool))}")
    return rules


def marker(text: str, spec: ConstraintSpec) -> str:
    """A special token reference when the vocabulary has `text` as one, else a literal."""
    return text if text in spec.special_tokens else lark_literal(text)


def lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def layout_json(schema: JSONSchema) -> str:
    """The schema with the pinned layout (x-guidance is read at a %json's top level only)."""
    return json.dumps({"x-guidance": JSON_LAYOUT, **schema})


def tool_schema(tool: Tool) -> JSONSchema:
    schema: JSONSchema = dict(tool.parameters) or {}
    schema.setdefault("type", "object")
    return schema


def text_schema(text: TextFormat) -> JSONSchema:
    return dict(text.schema or {}) if text.kind == "json_schema" else {"type": "object"}


# ---- validation by llguidance ----


def validate_lark(lark: str, shape: Plan, spec: ConstraintSpec) -> None:
    """Raise UnsupportedFeature unless llguidance compiles `lark` with no error nor warning;
    on failure, compile each schema alone to name the culprit."""
    reason = llguidance_problem(lark)
    if reason is None:
        return
    for i, tool in enumerate(spec.tools):
        if tool not in shape.tools:
            continue
        own = llguidance_problem(f"start: %json {layout_json(tool_schema(tool))}")
        if own is not None:
            raise _schema_error(f"tools[{i}].function.parameters", tool.name, own)
    if shape.text and spec.text.kind != "text":
        own = llguidance_problem(f"start: %json {layout_json(text_schema(spec.text))}")
        if own is not None:
            raise _schema_error(TEXT_PARAM, "response format", own)
    raise UnsupportedFeature(f"the tools cannot be compiled into one grammar: {reason}", param="tools")


def llguidance_problem(lark: str) -> str | None:
    """llguidance's error, or its first warning (a warning means something was not enforced)."""
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(lark)
    # Without a tokenizer llguidance cannot look special tokens up; the engine's matcher does.
    relevant = [m for m in messages if is_error or not m.startswith("no tokenizer")]
    return _first_line(relevant[0]) if relevant else None


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else message
    return re.sub(r"^at \d+\(\d+\): ", "", line)


def _schema_error(param: str, name: str, reason: str) -> InvalidRequest:
    if reason.startswith("failed to compile JSON schema: Unsatisfiable"):
        return InvalidRequest(
            f"{param} ({name}): no value can satisfy this schema ({reason}); fix the schema",
            param=param,
        )
    words = [_ALIASES.get(w, w) for w in _WORD_RE.findall(reason)]
    keywords = sorted({w for w in words if w in SCHEMA_KEYWORDS})
    what = "keyword " + ", ".join(repr(k) for k in keywords) if keywords else "schema"
    return UnsupportedFeature(
        f"{param} ({name}): JSON Schema {what} cannot be enforced by the grammar engine "
        f"({reason}); remove or rewrite it with supported keywords",
        param=param,
    )
