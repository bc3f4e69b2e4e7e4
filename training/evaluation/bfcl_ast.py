"""BFCL's AST matching: do the calls a model made match one of the possible answers?

Same semantics as bfcl_eval's `ast_checker` (Python categories), read from its source and
tested against it on BFCL's own data: each argument lists its acceptable values, `""` among
them means the argument may be omitted; strings compare after BFCL's standardisation
(case-insensitive, spaces and `,./-_*^` dropped); an int is accepted for a float; a value of
the possible answer's type where the schema says another is a "variable" and compared as is;
parallel calls match in any order (greedily, as BFCL does). Works on our JSON-Schema tools:
BFCL's Python type names come from the schema types (number = float, object = dict, no type =
BFCL's "any"). Pure: no I/O, no model, no format parsing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from server.types import JSONSchema, Tool

# One possible answer: {function name: {argument: [acceptable values, "" = may be omitted]}}.
PossibleAnswer = Mapping[str, Mapping[str, Sequence[Any]]]
Call = tuple[str, Mapping[str, Any]]  # (name, decoded arguments)

_PY_TYPES: dict[str, type] = {
    "string": str,
    "integer": int,
    "float": float,
    "boolean": bool,
    "array": list,
    "dict": dict,
    "any": str,
}
_SCHEMA_TO_BFCL = {
    "string": "string",
    "integer": "integer",
    "number": "float",
    "boolean": "boolean",
    "array": "array",
    "object": "dict",
}
_STANDARDIZE = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class Match:
    ok: bool
    error: str = ""
    error_type: str = ""  # BFCL's names: "value_error:string", "simple_function_checker:missing_required"...


OK = Match(True)


def bfcl_name(name: str) -> str:
    """A BFCL function name as served: "." becomes "_" (OpenAI's name rules)."""
    return name.replace(".", "_")


def match_calls(tools: Mapping[str, Tool], calls: Sequence[Call], possible: Sequence[PossibleAnswer]) -> Match:
    """Whether `calls` match `possible` (one answer per expected call), in any order.

    BFCL's simple and multiple checkers are this with one expected call."""
    if len(calls) != len(possible):
        return Match(False, f"wrong number of functions: {len(calls)}, expected {len(possible)}", "wrong_count")
    matched: set[int] = set()
    for i, answer in enumerate(possible):
        expected = bfcl_name(next(iter(answer)))
        tool = tools.get(expected)
        if tool is None:
            return Match(False, f"possible answer names undeclared tool {expected!r}", "bad_answer")
        errors = []
        for index, (name, args) in enumerate(calls):
            if index in matched:
                continue
            result = match_call(tool, name, args, answer)
            if result.ok:
                matched.add(index)
                break
            errors.append(f"call {index}: {result.error}")
        else:
            return Match(
                False,
                f"no call matches expected call {i} ({expected}): {'; '.join(errors)}",
                "cannot_find_match" if len(possible) > 1 else result.error_type,
            )
    return OK


def match_call(tool: Tool, name: str, args: Mapping[str, Any], answer: PossibleAnswer) -> Match:
    """BFCL's `simple_function_checker`: one call against one possible answer of `tool`."""
    possible = next(iter(answer.values()))
    if name != tool.name:
        return Match(False, f"function {tool.name!r} not called (got {name!r})", "wrong_func_name")
    properties: Mapping[str, JSONSchema] = tool.parameters.get("properties", {})
    for param in tool.parameters.get("required", []):
        if param not in args:
            return Match(False, f"missing required parameter {param!r}", "missing_required")
    for param, value in args.items():
        if param not in properties or param not in possible:
            return Match(False, f"unexpected parameter {param!r}", "unexpected_param")
        result = _match_value(param, value, properties[param], possible[param])
        if not result.ok:
            return result
    for param, values in possible.items():
        if param not in args and "" not in values:
            return Match(False, f"parameter {param!r} not provided and not optional", "missing_optional")
    return OK


def bfcl_type(schema: JSONSchema) -> str:
    """BFCL's type name for a JSON-Schema property (no or unknown type: "any")."""
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return _SCHEMA_TO_BFCL.get(kind, "any") if isinstance(kind, str) else "any"


def _match_value(param: str, value: Any, schema: JSONSchema, possible: Sequence[Any]) -> Match:
    kind = bfcl_type(schema)
    expected = _PY_TYPES[kind]
    items = schema.get("items")
    nested = _PY_TYPES[bfcl_type(items)] if kind == "array" and isinstance(items, dict) else None
    if kind == "float" and type(value) is int:
        value = float(value)  # Python's int -> float promotion, as BFCL allows
    typed = _type_check(param, value, possible, expected, nested)
    if not typed.ok:
        return typed
    variable = typed.error_type == "variable"
    if not variable:
        if expected is dict:
            return _dict_match(param, value, possible)
        if expected is list and nested is dict:
            return _list_of_dicts_match(param, value, possible)
        if expected is str:
            return _one_of(
                param, _standardize(value), [_standardize(p) for p in possible if type(p) is str], "value_error:string"
            )
        if expected is list:
            accepted = [_standardize_items(p) for p in possible if isinstance(p, (list, str))]
            return _one_of(param, _standardize_items(value), accepted, "value_error:list/tuple")
    return _one_of(param, value, list(possible), "value_error:others")


def _type_check(param: str, value: Any, possible: Sequence[Any], expected: type, nested: type | None) -> Match:
    """BFCL's `type_checker`; ok with error_type "variable" when the value is taken to be a
    variable (the possible answer's type differs from the schema's), compared as is."""
    answer_type = next((type(p) for p in possible if p != ""), None)
    variable = answer_type is not None and answer_type is not expected
    mark = "variable" if variable else ""
    if type(value) is expected:
        if nested is None or _nested_ok(value, possible, nested):
            return Match(True, error_type=mark)
        return Match(
            False, f"nested type check failed for {param!r}: items should be {nested.__name__}", "type_error:nested"
        )
    if answer_type is not None and type(value) is answer_type:
        return Match(True, error_type="variable")
    return Match(
        False,
        f"incorrect type for {param!r}: expected {expected.__name__}, got {type(value).__name__}",
        "type_error:simple",
    )


def _nested_ok(value: Any, possible: Sequence[Any], nested: type) -> bool:
    # BFCL checks item types only against possible answers that are lists; any other possible
    # answer (the optional "" included) lets the value through.
    for answer in possible:
        if type(answer) is not list:
            return True
        if all(_type_check("", item, answer, nested, None).ok for item in value):
            return True
    return False


def _standardize(text: str) -> str:
    return _STANDARDIZE.sub("", text).lower().replace("'", '"')


def _standardize_items(items: Any) -> list[Any]:
    # Iterating as BFCL does: a possible answer that is a string becomes its characters
    # (so "" stands for the empty list).
    return [_standardize(x) if type(x) is str else x for x in items]


def _one_of(param: str, value: Any, accepted: list[Any], error_type: str) -> Match:
    if value in accepted:
        return OK
    return Match(False, f"invalid value for {param!r}: {value!r}; expected one of {accepted!r}", error_type)


def _dict_match(param: str, value: Mapping[str, Any], possible: Sequence[Any]) -> Match:
    result = Match(False, f"no possible answer for dict {param!r}", "dict_checker:unclear")
    for answer in possible:
        if not isinstance(answer, Mapping):  # "" (optional) and variables: BFCL skips them
            continue
        result = _dict_against(value, answer)
        if result.ok:
            return OK
    return result


def _dict_against(value: Mapping[str, Any], answer: Mapping[str, Sequence[Any]]) -> Match:
    for key, item in value.items():
        if key not in answer:
            return Match(False, f"unexpected dict key {key!r}", "value_error:dict_key")
        standard = _standardize(item) if type(item) is str else item
        if standard not in _standardize_items(answer[key]):
            return Match(False, f"invalid value for dict key {key!r}: {item!r}", "value_error:dict_value")
    for key, accepted in answer.items():
        if key not in value and "" not in accepted:
            return Match(False, f"missing dict key {key!r}", "value_error:dict_key")
    return OK


def _list_of_dicts_match(param: str, value: list[Any], possible: Sequence[Any]) -> Match:
    result = Match(False, f"no possible answer for list {param!r}", "list_dict_checker:unclear")
    for answer in possible:
        if not isinstance(answer, (list, str)) or len(value) != len(answer):
            result = Match(False, f"wrong number of dicts in {param!r}", "value_error:list_dict_count")
            continue
        for item, item_answer in zip(value, answer, strict=True):
            result = (
                _dict_match(param, item, [item_answer])
                if isinstance(item, dict)
                else Match(False, f"{param!r} holds a {type(item).__name__}, not a dict", "type_error:nested")
            )
            if not result.ok:
                break
        else:
            return OK
    return result
