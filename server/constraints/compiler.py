"""The constraint compiler: tools x tool_choice x parallel x text format x tool-call format -> one
llguidance Lark grammar, validated by llguidance itself and cached. It knows nothing of HTTP,
engines or tokenizers (special tokens arrive as texts). The request checks and mode plan live in
spec.py, the Lark emission in lark.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass, replace

import llguidance

from server.bytecache import ByteLRU
from server.constraints.lark import emit_lark, is_token
from server.constraints.spec import (
    GRAMMARS_DIR,
    SCHEMA_KEYWORDS,
    TEXT_PARAM,
    ConstraintSpec,
    Plan,
    layout_json,
    plan,
    text_schema,
    tool_schema,
)
from server.errors import InvalidRequest, UnsupportedFeature
from server.toolcalls.base import ToolFormat
from server.toolcalls.validation import clear_schema_checks
from server.types import Tool

__all__ = [
    "GRAMMARS_DIR",
    "CacheStats",
    "Constraint",
    "ConstraintSpec",
    "cache_stats",
    "cached_constraint",
    "clear_cache",
    "compile_constraint",
]

_ALIASES = {
    "patternProperty": "patternProperties",
    "Resource": "$ref",
    "min/maxProperties": "minProperties",
}
_WORD_RE = re.compile(r"[$\w/]+")


@dataclass(frozen=True)
class Constraint:
    lark: str | None  # None: unconstrained
    key: str  # stable hash of the lark, for caches and logs
    compile_ms: float  # build + validate; 0 on a cache hit
    cached: bool


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    size: int  # entries
    capacity: int  # bytes (grammar text and key), the budget
    used: int = 0  # bytes charged now


# Keyed by digest (specs hold dicts); bounded in bytes: grammars of large tool lists are large.
_CACHE: ByteLRU[str, Constraint] = ByteLRU(32 << 20, lambda key, c: len(key) + len(c.lark or "") + 256)


def cache_stats() -> CacheStats:
    return CacheStats(_CACHE.hits, _CACHE.misses, len(_CACHE), _CACHE.budget, _CACHE.used)


def clear_cache() -> None:
    """Forget compiled grammars and memoized schema checks (for cold-start measurements)."""
    _CACHE.clear()
    clear_schema_checks()


def cached_constraint(spec: ConstraintSpec, fmt: ToolFormat) -> tuple[Constraint] | None:
    """(the compiled constraint,) if it is cached (a few microseconds), else None: the shape of
    native.cached_native, whose cached answer can itself be None."""
    found = _CACHE.get(cache_key(spec, fmt))
    return None if found is None else (replace(found, compile_ms=0.0, cached=True),)


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
        validate_lark(lark, shape, spec, fmt)
    check_left_out(shape, spec, fmt)
    ms = (time.perf_counter() - start) * 1e3
    built = Constraint(lark, lark_key(lark), ms, cached=False)
    _CACHE.put(key, built)
    return built


def cache_key(spec: ConstraintSpec, fmt: ToolFormat) -> str:
    """Digest of what the grammar depends on. Key order is kept: it fixes the property order."""
    env = fmt.envelope
    doc = [
        fmt.name,
        repr(env),
        [is_token(m, spec) for m in (env.open, env.close, env.args_open)],
        [[t.name, t.parameters] for t in spec.tools],
        spec.choice.mode.value,
        spec.choice.name,
        spec.parallel,
        spec.text.kind,
        spec.text.schema,
        sorted(spec.token_ids),
    ]
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def lark_key(lark: str | None) -> str:
    return "unconstrained" if lark is None else hashlib.sha256(lark.encode()).hexdigest()[:16]


def validate_lark(lark: str, shape: Plan, spec: ConstraintSpec, fmt: ToolFormat) -> None:
    """Raise UnsupportedFeature unless llguidance compiles `lark` with no error nor warning;
    on failure, compile each schema (or each tool's own rules) alone to name the culprit."""
    reason = llguidance_problem(lark)
    if reason is None:
        return
    for i, tool in enumerate(spec.tools):
        if tool in shape.tools and (own := _tool_problem(tool, spec, fmt)) is not None:
            raise _schema_error(f"tools[{i}].function.parameters", tool.name, own)
    if shape.text and spec.text.kind != "text":
        own = llguidance_problem(f"start: %json {layout_json(text_schema(spec.text))}")
        if own is not None:
            raise _schema_error(TEXT_PARAM, "response format", own)
    raise UnsupportedFeature(f"the tools cannot be compiled into one grammar: {reason}", param="tools")


def check_left_out(shape: Plan | None, spec: ConstraintSpec, fmt: ToolFormat) -> None:
    """Tools this mode leaves out of the grammar (a named choice of another tool, `none`) are
    compiled alone all the same: a tools list is accepted or refused whatever tool_choice says,
    so an agent loop never learns of a bad schema only when its tool_choice changes."""
    planned = shape.tools if shape is not None else ()
    for i, tool in enumerate(spec.tools):
        if tool not in planned and (own := _tool_problem(tool, spec, fmt)) is not None:
            raise _schema_error(f"tools[{i}].function.parameters", tool.name, own)


def _tool_problem(tool: Tool, spec: ConstraintSpec, fmt: ToolFormat) -> str | None:
    """llguidance's complaint about one tool's schema, alone and in the format's own rules."""
    own = llguidance_problem(f"start: %json {layout_json(tool_schema(tool))}")
    if own is None and fmt.args_rules(tool, "args_0") is not None:
        own = llguidance_problem(emit_lark(Plan((tool,), False, False), spec, fmt))
    return own


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
