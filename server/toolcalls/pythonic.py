"""Pythonic tool calls (Llama 3.2 / 4 and others): the whole output is a Python list of calls,
`[get_weather(city="Paris"), ping()]`, keyword arguments only, values Python literals
(pyliteral.py). The format carries no text beside calls: `render` drops content when there are
calls.

Decisions: an output is a call list when, after whitespace, it starts with `[` and a name
followed by `(`; anything else is content, whole. Each call is released as soon as its
parentheses close. Tool and parameter names must be Python identifiers (dotted tool names such as
`math.factorial` are fine); the grammar writes declared parameters only, in schema order, and
keeps free text from starting with `[`.
"""

from __future__ import annotations

import json
import keyword
from collections.abc import Sequence

from server.errors import UnsupportedFeature
from server.toolcalls.argrules import keyword_params
from server.toolcalls.base import Envelope
from server.toolcalls.jsonargs import lark_string, loads
from server.toolcalls.pyliteral import PyGrammar, chain, literal, read_call
from server.toolcalls.sections import Section, SectionStreamParser
from server.toolcalls.streaming import FormatBase
from server.types import Tool, ToolCall

SYNTAX = Section(openers=("[",), at_start=True, python=True)


class PythonicFormat(FormatBase):
    name = "pythonic"
    envelope = Envelope(grammar_file="pythonic.lark", open="[", close="]", text_sep=None)

    def render(self, content: str | None, calls: Sequence[ToolCall]) -> str:
        if not calls:
            return content or ""
        return "[" + ", ".join(map(_call_text, calls)) + "]"

    def inner_parser(self) -> SectionStreamParser:
        return SectionStreamParser(SYNTAX, read_call)

    def call_body(self, tool: Tool, args_rule: str) -> str:
        if not all(_identifier(part) for part in tool.name.split(".")):
            raise UnsupportedFeature(
                f"tool format {self.name!r} needs tool names that are Python identifiers; got {tool.name!r}",
                param="function.name",
            )
        return f'{lark_string(tool.name + "(")} {args_rule} ")"'

    def args_rules(self, tool: Tool, args_rule: str) -> list[str]:
        params = keyword_params(tool, self.name)
        bad = [p.name for p in params if not _identifier(p.name)]
        if bad:
            raise UnsupportedFeature(
                f"tool format {self.name!r} needs parameter names that are Python identifiers; got {bad[0]!r}"
            )
        grammar = PyGrammar(tool.parameters or {}, args_rule, self.name)
        items = [(f"{lark_string(p.name + '=')} {grammar.value(p.schema)}", p.required) for p in params]
        return [f"{args_rule}: {chain(items, grammar) or json.dumps('')}", *grammar.rules]


def _call_text(call: ToolCall) -> str:
    args = loads(call.arguments) if call.arguments.strip() else {}
    return f"{call.name}(" + ", ".join(f"{key}={literal(value)}" for key, value in args.items()) + ")"


def _identifier(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name)
