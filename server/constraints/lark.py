"""Lark emission: a checked spec and a tool-call format -> one llguidance Lark grammar. The format
is known through its `Envelope` (markers, text answer, separators), its grammar file and its
`call_body` / `args_rules`; the text answer never contains an opener (or, for formats whose calls
are the whole output, never starts with one), and special tokens are referenced as tokens.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from server.constraints.spec import (
    ConstraintSpec,
    Plan,
    grammar_tool,
    layout_json,
    load_grammar_file,
    text_schema,
    tool_schema,
)
from server.errors import InvalidRequest, UnsupportedFeature
from server.toolcalls.base import Envelope, ToolFormat
from server.types import JSONSchema, Tool

_JSON_MARK = "%json "


def emit_lark(shape: Plan, spec: ConstraintSpec, fmt: ToolFormat) -> str:
    """The Lark text: start, the text answer, then the format's envelope file and call bodies."""
    parts = ["%llguidance {}", _start_rule(shape), *_reply_rules(spec, fmt, shape)]
    if shape.tools or uses_open(fmt.envelope, shape):
        parts += _marker_rules(spec, fmt)
    if shape.tools:
        parts += [load_grammar_file(fmt.envelope.grammar_file), *_lead_rules(spec, fmt, shape)]
        parts += _call_body_rules(spec, shape.tools, fmt)
    return "\n".join(parts) + "\n"


def _start_rule(shape: Plan) -> str:
    alternatives = ["reply"] if shape.text else []
    if shape.tools:
        alternatives.append("calls" if shape.many else "call")
    return "start: " + " | ".join(alternatives)


def uses_open(env: Envelope, shape: Plan) -> bool:
    """Whether the text answer's own prefix is written with the opener (functionary's `>>>all`)."""
    return shape.text and bool(env.open) and env.reply[0].startswith(env.open)


def reply_parts(env: Envelope) -> tuple[str | None, str, str]:
    """The text answer's prefix as (`open` rule or None, rest of the prefix, suffix)."""
    head, tail = env.reply
    if env.open and head.startswith(env.open):
        return "open", head[len(env.open) :], tail
    return None, head, tail


def _reply_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> list[str]:
    if not shape.text:
        return []
    opener, head, tail = reply_parts(fmt.envelope)
    reply = _join(opener, lark_literal(head) if head else None, "text", lark_literal(tail) if tail else None)
    return [f"reply: {reply}", *_text_rules(spec, fmt)]


def _text_rules(spec: ConstraintSpec, fmt: ToolFormat) -> list[str]:
    env = fmt.envelope
    if spec.text.kind != "text":
        return [f"text: %json {layout_json(text_schema(spec.text))}"]
    if env.json_reply:
        return [f"text: %json {layout_json({'type': 'string'})}"]
    banned = "(" + " | ".join(lark_literal(b) for b in env.banned) + ")"
    rules = ["text: TEXT", "ANY_TEXT: /(?s:.*)/"]
    if env.text_sep is None:  # calls are the whole output: text never starts like one
        return rules + [f"TEXT: ANY_TEXT & ~(/[ \\t\\n\\r]*/ {banned} ANY_TEXT)"]
    border = overlap(env.open) if not env.text_sep and not is_token(env.open, spec) else ""
    # Text written right before a self-overlapping opener must not end with its border:
    # "a>" + ">>>" would read as "a" and ">>>>".
    tail = f" & ~(ANY_TEXT {lark_literal(border)})" if border else ""
    return rules + [
        f"TEXT: ANY_TEXT & ~(ANY_TEXT {banned} ANY_TEXT)",
        f"TEXT_NE: /(?s:.+)/ & ~(ANY_TEXT {banned} ANY_TEXT){tail}",
    ]


def overlap(marker: str) -> str:
    """The shortest proper prefix of `marker` that is also its suffix ("" if none)."""
    return next((marker[:k] for k in range(1, len(marker)) if marker.endswith(marker[:k])), "")


def _marker_rules(spec: ConstraintSpec, fmt: ToolFormat) -> list[str]:
    env = fmt.envelope
    rules = [f"open: {marker(env.open, spec)}"]
    if env.close:
        rules.append(f"close: {marker(env.close, spec)}")
    if env.args_open:
        rules.append(f"argsopen: {marker(env.args_open, spec)}")
    return rules


def _lead_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> list[str]:
    """`lead`: the first opener and, in auto mode, the text before it."""
    env = fmt.envelope
    if not shape.text or env.text_sep is None:
        return ["lead: open"]
    opener, head, _ = reply_parts(env)
    prefix = _join(opener, lark_literal(head) if head else None)
    sep = lark_literal(env.text_sep) if env.text_sep else None
    if spec.text.kind != "text" or env.json_reply:
        return [f"lead: open | {_join(prefix, 'text', sep, 'open')}"]
    if is_token(env.open, spec):
        return [f"lead: open | {_join(prefix, 'LEAD_TEXT', 'open')}", f"LEAD_TEXT: {_join('TEXT_NE', sep)}"]
    # One lexeme from text to opener: as two, the greedy text lexeme would eat the opener.
    return [
        f"lead: open | {_join(prefix, 'LEAD_TEXT_OPEN')}",
        f"LEAD_TEXT_OPEN: {_join('TEXT_NE', sep, lark_literal(env.open))}",
    ]


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _call_body_rules(spec: ConstraintSpec, tools: tuple[Tool, ...], fmt: ToolFormat) -> list[str]:
    names = [f"call_{i}" for i in range(len(tools))]
    rules = ["call_body: " + " | ".join(names)]
    for i, tool in enumerate(tools):
        body, own = format_rules(spec, fmt, tool, f"args_{i}")
        rules.append(f"call_{i}: {body}")
        if own is None:
            rules.append(f"args_{i}: %json {layout_json(tool_schema(tool))}")
        else:
            rules += [expand_json(rule, lambda schema: "%json " + layout_json(schema)) for rule in own]
    return rules


def format_rules(spec: ConstraintSpec, fmt: ToolFormat, tool: Tool, args_rule: str) -> tuple[str, list[str] | None]:
    """The format's call body and argument rules for `tool`; its refusals name the tool's index."""
    enforced = grammar_tool(tool)
    try:
        return fmt.call_body(enforced, args_rule), fmt.args_rules(enforced, args_rule)
    except InvalidRequest as error:
        index = spec.tools.index(tool)
        param = f"tools[{index}].{error.param or 'function.parameters'}"
        raise type(error)(f"tools[{index}] ({tool.name}): {error.message}", param=param) from None


def expand_json(rule: str, emit: Callable[[JSONSchema], str]) -> str:
    """`rule` with each `%json {schema}` placeholder a format wrote replaced by `emit(schema)`."""
    out, pos, decoder = [], 0, json.JSONDecoder()
    while (at := rule.find(_JSON_MARK, pos)) >= 0:
        try:
            schema, end = decoder.raw_decode(rule, at + len(_JSON_MARK))
        except ValueError:
            broken = rule[at : at + 60]
            raise UnsupportedFeature(f"a tool-call format wrote a broken %json placeholder: {broken!r}") from None
        out += [rule[pos:at], emit(schema)]
        pos = end
    return "".join(out) + rule[pos:]


def marker(text: str, spec: ConstraintSpec) -> str:
    """A special token reference when the vocabulary has `text` as one, else a literal."""
    if not is_token(text, spec):
        return lark_literal(text)
    return text if is_named_token(text) else f"<[{dict(spec.token_ids)[text]}]>"


def is_token(text: str, spec: ConstraintSpec) -> bool:
    """Whether `text` is written as a special token: by name (`<...>`), or by id when the
    engine gave one (mistral's `[TOOL_CALLS]`); else its text is spelled with ordinary tokens."""
    if text not in spec.special_tokens:
        return False
    return is_named_token(text) or text in dict(spec.token_ids)


def is_named_token(text: str) -> bool:
    return text.startswith("<") and text.endswith(">")


def lark_literal(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)
