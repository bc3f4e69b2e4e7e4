"""GBNF emitter for llama.cpp-native consumers (llama-server upstream, grammar files): the same
modes, envelope and pinned JSON layout as the Lark emitter. Argument schemas go through
gbnf_schema.py; a format's own argument rules (`args_rules`) are translated from their Lark
subset. It knows nothing of engines and needs no llama_cpp to emit.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePath

from server.constraints.gbnf_schema import JSON_RULES, Unenforceable, class_char, convert, gbnf_literal
from server.constraints.lark import (
    expand_json,
    format_rules,
    is_named_token,
    is_token,
    overlap,
    reply_parts,
    uses_open,
)
from server.constraints.spec import TEXT_PARAM, ConstraintSpec, Plan, load_grammar_file, plan, text_schema, tool_schema
from server.errors import UnsupportedFeature
from server.toolcalls.base import Envelope, ToolFormat
from server.types import JSONSchema


def to_gbnf(spec: ConstraintSpec, fmt: ToolFormat) -> str:
    """GBNF text enforcing `spec` in `fmt`'s layout; "" when unconstrained. Raises like compile."""
    shape = plan(spec)
    if shape is None:
        return ""
    rules = [JSON_RULES, _root_rule(shape)]
    rules += _reply_rules(spec, fmt, shape)
    if shape.tools or uses_open(fmt.envelope, shape):
        rules += _marker_rules(spec, fmt)
    if shape.tools:
        rules.append(load_grammar_file(str(PurePath(fmt.envelope.grammar_file).with_suffix(".gbnf"))))
        rules += _lead_rules(spec, fmt, shape) + _call_rules(spec, fmt, shape)
    return "\n".join(r for r in rules if r) + "\n"


def _root_rule(shape: Plan) -> str:
    alternatives = ["reply"] if shape.text else []
    if shape.tools:
        alternatives.append("calls" if shape.many else "call")
    return "root ::= " + " | ".join(alternatives)


def _reply_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> list[str]:
    if not shape.text:
        return []
    env = fmt.envelope
    opener, head, tail = reply_parts(env)
    reply = _join(opener, gbnf_literal(head) if head else None, "text", gbnf_literal(tail) if tail else None)
    rules = [f"reply ::= {reply}"]
    if spec.text.kind != "text":
        body = convert(text_schema(spec.text), "text-json", TEXT_PARAM, "response format")
        return rules + ["text ::= text-json", body]
    if env.json_reply:
        return rules + ["text ::= json-string"]
    if env.text_sep is None:
        return rules + not_starting_rules("text", env.banned)
    [banned] = env.banned  # one opener: the automaton below bans a single text
    rules += excluding_rules("text", banned)
    if _border(spec, env):  # see compiler._text_rules: text right before the opener
        rules += excluding_rules("leadtext", banned, ends={0})
    return rules


def _border(spec: ConstraintSpec, env: Envelope) -> str:
    return overlap(env.open) if not env.text_sep and not _gbnf_token(env.open, spec) else ""


def _marker_rules(spec: ConstraintSpec, fmt: ToolFormat) -> list[str]:
    env = fmt.envelope
    rules = [f"open ::= {marker(env.open, spec)}"]
    if env.close:
        rules.append(f"close ::= {marker(env.close, spec)}")
    if env.args_open:
        rules.append(f"argsopen ::= {marker(env.args_open, spec)}")
    return rules


def _lead_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> list[str]:
    env = fmt.envelope
    if not shape.text or env.text_sep is None:
        return ["lead ::= open"]
    opener, head, _ = reply_parts(env)
    if spec.text.kind != "text":
        before = "text-json"
    elif env.json_reply:
        before = "json-string"
    else:
        before = "leadtext-ne" if _border(spec, env) else "text-ne"
    sep = gbnf_literal(env.text_sep) if env.text_sep else None
    return [f"lead ::= open | {_join(opener, gbnf_literal(head) if head else None, before, sep, 'open')}"]


def _join(*parts: str | None) -> str:
    return " ".join(p for p in parts if p)


def _call_rules(spec: ConstraintSpec, fmt: ToolFormat, shape: Plan) -> list[str]:
    rules = ["call-body ::= " + " | ".join(f"call-{i}" for i in range(len(shape.tools)))]
    for i, tool in enumerate(shape.tools):
        index = spec.tools.index(tool)
        param = f"tools[{index}].function.parameters"
        # call_body is string literals around rule names: valid GBNF as well as Lark.
        body, own = format_rules(spec, fmt, tool, f"args-{i}")
        rules.append(f"call-{i} ::= {body}")
        if own is None:
            rules.append(convert(tool_schema(tool), f"args-{i}", param, tool.name))
        else:
            rules += _translate(own, f"args-{i}", param, tool.name)
    return rules


_LARK_TOKEN = re.compile(r'\s+|"(?:[^"\\]|\\.)*"|[A-Za-z_][A-Za-z0-9_-]*|[()|?*+]|.', re.S)


def _translate(rules: list[str], prefix: str, param: str, owner: str) -> list[str]:
    """A format's Lark argument rules as GBNF: literals, names (`_` -> `-`, terminals lower-cased:
    the format's .gbnf file defines them), `| ( ) ? * +`, and `%json` placeholders converted like
    tools' schemas. Anything else (regexes, `&`, `~`) raises UnsupportedFeature."""
    out: list[str] = []

    def emit_json(schema: JSONSchema) -> str:
        name = f"{prefix}-j{len(out)}"
        out.append(convert(schema, name, param, owner))
        return name

    for rule in rules:
        name, _, body = rule.partition(": ")
        try:
            out.append(f"{_gbnf_name(name)} ::= {_gbnf_body(expand_json(body, emit_json))}")
        except Unenforceable as problem:
            raise UnsupportedFeature(
                f"{param} ({owner}): {problem} cannot be expressed in GBNF; use the Lark grammar (llguidance)",
                param=param,
            ) from None
    return out


def _gbnf_body(body: str) -> str:
    out = []
    for m in _LARK_TOKEN.finditer(body):
        token = m.group()
        if token.startswith('"'):
            out.append(gbnf_literal(json.loads(token)))
        elif token[0].isalpha() or token[0] == "_":
            out.append(_gbnf_name(token))
        elif token.isspace() or token in "()|?*+":
            out.append(token)
        else:
            raise Unenforceable(f"the argument syntax's {token!r}")
    return "".join(out)


def _gbnf_name(name: str) -> str:
    return name.lower().replace("_", "-")


def marker(text: str, spec: ConstraintSpec) -> str:
    """llama.cpp's token reference when `text` is a special token, else a literal."""
    return text if _gbnf_token(text, spec) else gbnf_literal(text)


def _gbnf_token(text: str, spec: ConstraintSpec) -> bool:
    """GBNF names special tokens as `<...>` only; others are spelled as text there."""
    return is_token(text, spec) and is_named_token(text)


def excluding_rules(name: str, banned: str, ends: set[int] | None = None) -> list[str]:
    """`name` (any text) and `name`-ne (non-empty) never containing `banned`: a KMP automaton,
    one rule per matched prefix length; reaching the full length has no transition. With `ends`,
    the text may only end in those states (0: not ending with a prefix of `banned`)."""
    states = [_state_alternatives(name, banned, k) for k in range(len(banned))]
    rules = [f"{name} ::= {name}-0", f"{name}-ne ::= " + " | ".join(states[0])]
    for k, alts in enumerate(states):
        stop = ['""'] if ends is None or k in ends else []
        rules.append(f"{name}-{k} ::= " + " | ".join(stop + alts))
    return rules


def not_starting_rules(name: str, banned: tuple[str, ...]) -> list[str]:
    """`name`: any text that, after whitespace, does not start with any of `banned`."""
    rules = [f"{name} ::= [ \\t\\n\\r]* ({name}-start)?", f"{name}-any ::= [^\\x00]*"]
    rules += _trie_exclusion(f"{name}-start", "", sorted(set(banned)), f"{name}-any")
    return rules


def _trie_exclusion(name: str, prefix: str, banned: list[str], rest: str) -> list[str]:
    """Text that starts with `prefix` (already written) and then leaves every banned text."""
    following = sorted({b[len(prefix)] for b in banned if len(b) > len(prefix)})
    # A proper prefix of a banned text may end the output; first characters must not be whitespace.
    alts = ['""'] if prefix else []
    skip = "".join(class_char(c) for c in following) + ("\\x20\\x09\\x0A\\x0D" if not prefix else "")
    alts.append(f"[^{skip}] {rest}")
    rules: list[str] = []
    for c in following:
        longer = [b for b in banned if b.startswith(prefix + c)]
        if prefix + c in longer:
            continue  # the whole banned text: no way on
        child = f"{name}-{ord(c):x}"
        alts.append(f"{gbnf_literal(c)} {child}")
        rules += _trie_exclusion(child, prefix + c, longer, rest)
    return [f"{name} ::= " + " | ".join(alts), *rules]


def _state_alternatives(name: str, banned: str, k: int) -> list[str]:
    moves = {c: _next_state(banned, k, c) for c in sorted(set(banned))}
    special = [c for c, to in moves.items() if to != 0]
    alts = [f"{gbnf_literal(c)} {name}-{to}" for c, to in moves.items() if 0 < to < len(banned)]
    other = "[^" + "".join(class_char(c) for c in special) + "]"
    return alts + [f"{other} {name}-0"]


def _next_state(banned: str, k: int, c: str) -> int:
    """Longest prefix of `banned` that is a suffix of banned[:k] + c."""
    seen = banned[:k] + c
    return next(n for n in range(len(seen), -1, -1) if seen.endswith(banned[:n]))
