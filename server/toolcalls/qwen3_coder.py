"""Qwen3-Coder tool calls, XML parameters:
`<tool_call>\\n<function=NAME>\\n<parameter=KEY>\\nVALUE\\n</parameter>\\n...</function>\\n</tool_call>`,
calls joined by "\\n", after optional content and "\\n\\n" (as Qwen3-Coder's template writes them).

A value is read as JSON when it is JSON (numbers, booleans, null, objects, arrays, quoted strings),
else as a raw string; parsing needs no schema. So a string is written raw only when that cannot
be misread: not empty, not starting with whitespace or any of `{["-0123456789`, not
`true`/`false`/`null` (trailing whitespace aside), never containing "\\n</parameter>"; other
strings are written JSON-quoted, and the grammar allows exactly these forms. A value runs to the
first "\\n</parameter>"; `</tool_call>` inside a value does not end the call.

Decisions: only declared parameters are written, in schema order; `pattern` / `format` on a
parameter that may be a raw string, and combinators whose raw strings cannot be told
(`allOf`, `not`, `if`), raise UnsupportedFeature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from server.errors import UnsupportedFeature
from server.patterns import safe_validator
from server.toolcalls.argrules import Param, json_value, keyword_params, resolve, types_of, with_defs
from server.toolcalls.base import Envelope, ParsedCall
from server.toolcalls.jsonargs import lark_string, loads
from server.toolcalls.scan import XmlParamScan
from server.toolcalls.streaming import FormatBase, MarkerStreamParser
from server.types import JSONSchema, Tool, ToolCall

OPEN = "<tool_call>"
CLOSE = "</tool_call>"
VALUE_END = "\n</parameter>\n"
FUNCTION_END = "</function>\n"
NL = "\n"
EMPTY = '""'
_RAW = re.compile(r'[^ \t\n\r{\["\-0-9][\s\S]*')
_LITERAL = re.compile(r"(true|false|null)[ \t\n\r]*")
_FUNCTION = re.compile(r"\s*<function=([^>\n]*)>\n?")
_UNTOLD = ("allOf", "not", "if", "$dynamicRef")


class Qwen3CoderFormat(FormatBase):
    name = "qwen3_coder"
    envelope = Envelope(grammar_file="qwen3_coder.lark", open=OPEN, close=CLOSE, text_sep="\n\n")

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        blocks = "\n".join(f"{OPEN}\n{_call_text(call)}{CLOSE}" for call in calls)
        return "\n\n".join(part for part in (content, blocks) if part)

    def inner_parser(self) -> MarkerStreamParser:
        return MarkerStreamParser(OPEN, lambda: XmlParamScan(CLOSE), _parse_body, text_sep="\n\n")

    def call_body(self, tool: Tool, args_rule: str) -> str:
        if any(c in tool.name for c in "<>\n"):
            message = f"tool format {self.name!r} cannot write the name {tool.name!r}"
            raise UnsupportedFeature(message, param="function.name")
        return f"{lark_string(f'{NL}<function={tool.name}>{NL}')} {args_rule} {lark_string(FUNCTION_END)}"

    def args_rules(self, tool: Tool, args_rule: str) -> list[str]:
        params = keyword_params(tool, self.name)
        rules: list[str] = []
        parts = []
        for i, param in enumerate(params):
            expr = _param_expr(param, tool.parameters or {}, f"{args_rule}_{i}", rules)
            parts.append(expr if param.required else f"({expr})?")
        return [f"{args_rule}: {' '.join(parts) or EMPTY}", *rules]


def _call_text(call: ToolCall) -> str:
    args = loads(call.arguments) if call.arguments.strip() else {}
    params = "".join(f"<parameter={key}>\n{value_text(value)}{VALUE_END}" for key, value in args.items())
    return f"<function={call.name}>\n{params}{FUNCTION_END}"


def value_text(value: Any) -> str:
    """A parameter value as written: raw when that reads back as the same string, else JSON."""
    if isinstance(value, str) and raw_ok(value):
        return value
    return json.dumps(value, ensure_ascii=False)


def raw_ok(text: str) -> bool:
    return bool(_RAW.fullmatch(text)) and not _LITERAL.fullmatch(text) and VALUE_END[:-1] not in text


def _param_expr(param: Param, root: JSONSchema, name: str, rules: list[str]) -> str:
    if any(c in param.name for c in "<>\n"):
        raise UnsupportedFeature(f"tool format 'qwen3_coder' cannot write the parameter name {param.name!r}")
    branches = _raw_branches(param.schema, root, name.upper(), rules, depth=0)
    if branches:  # one lexeme each, or the greedy raw lexeme would swallow `null` and fail later
        check = safe_validator(with_defs(param.schema, root))
        branches += [lark_string(f"{json.dumps(v)}{VALUE_END}") for v in (True, False, None) if check.is_valid(v)]
    branches.append(f"{json_value(param.schema, root)} VALUE_END")
    rules.append(f"{name}: " + " | ".join(dict.fromkeys(branches)))
    return f"{lark_string(f'<parameter={param.name}>{NL}')} {name}"


def _raw_branches(schema: JSONSchema | bool, root: JSONSchema, name: str, rules: list[str], depth: int) -> list[str]:
    """Grammar alternatives for the raw-string forms of `schema`'s values (each ending the value)."""
    if schema is True or schema == {}:
        return ["RAW_VALUE"]
    if schema is False or depth > 8:
        return []
    assert isinstance(schema, dict)
    if "$ref" in schema:
        return _raw_branches(resolve(schema, root), root, name, rules, depth + 1)
    if "enum" in schema or "const" in schema:
        return _raw_literals(schema)
    options = schema.get("anyOf", []) + schema.get("oneOf", [])
    if options:
        return [b for i, o in enumerate(options) for b in _raw_branches(o, root, f"{name}_{i}", rules, depth + 1)]
    if "string" not in types_of(schema):
        return []
    untold = [k for k in (*_UNTOLD, "pattern", "format") if k in schema]
    if untold:
        raise UnsupportedFeature(
            f"tool format 'qwen3_coder' writes strings raw and cannot enforce {untold[0]!r} on them; "
            "remove it or use a JSON format such as hermes"
        )
    return [_sized_raw(schema, name, rules)]


def _raw_literals(schema: JSONSchema) -> list[str]:
    values = [schema["const"]] if "const" in schema else list(schema["enum"])
    rest = safe_validator({k: v for k, v in schema.items() if k not in ("enum", "const")})
    raw = [v for v in values if isinstance(v, str) and raw_ok(v) and rest.is_valid(v)]
    return [lark_string(v + VALUE_END) for v in raw]


def _sized_raw(schema: JSONSchema, name: str, rules: list[str]) -> str:
    low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
    if low <= 1 and high is None:
        return "RAW_VALUE"
    rules.append(f"{name}: (RAW_BODY & /(?s:.{{{low},{'' if high is None else int(high)}}})/) VALUE_END")
    return name


def _parse_body(body: str) -> ParsedCall:
    head = _FUNCTION.match(body)
    if head is None:
        return ParsedCall(name="", arguments=body, error="call has no <function=NAME>")
    name, pos, args = head.group(1).strip(), head.end(), {}
    while (start := body.find("<parameter=", pos)) >= 0:
        key_end = body.find(">", start)
        end = body.find(VALUE_END[:-1], key_end) if key_end >= 0 else -1
        if end < 0:
            return ParsedCall(name=name, arguments=body, error="a parameter is not closed")
        args[body[start + len("<parameter=") : key_end]] = _read_value(body[key_end + 1 : end].removeprefix("\n"))
        pos = end + len(VALUE_END) - 1
    if body[pos:].strip() not in ("</function>", ""):
        return ParsedCall(name=name, arguments=body, error="unexpected text after the parameters")
    return ParsedCall(name=name, arguments=json.dumps(args, ensure_ascii=False))


def _read_value(text: str) -> Any:
    try:
        return loads(text)
    except (ValueError, RecursionError):
        return text
