"""BFCL AST matching (training.evaluation.bfcl_ast) on BFCL's own data: every possible answer matches
itself, mutated answers fail, and on all of them the verdict equals that of BFCL's own
`ast_checker`, loaded from the same wheel as the oracle."""

from __future__ import annotations

import copy
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from server.types import Tool
from training.evaluation import bfcl
from training.evaluation.bfcl_ast import Call, bfcl_name, match_calls

AST_CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple",
                  "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]  # fmt: skip
# Ground truth that contradicts its own function doc (a required parameter absent from the
# answer, or an answer parameter the doc lacks): no call can match, BFCL's checker included.
UNSATISFIABLE = {"live_simple_106-63-0", "live_simple_112-68-0", "live_multiple_507-149-4",
                 "live_multiple_862-181-3", "live_multiple_964-207-0"}  # fmt: skip

Checker = Callable[[dict[str, Any], list[Call], list[dict[str, Any]], str], bool]


@pytest.fixture(scope="module")
def bfcl_checker() -> Iterator[Checker]:
    """bfcl_eval's own ast_checker, imported from the wheel; its model registry (which pulls
    in every provider's SDK) is replaced by one answer: names are served with "_" for "."."""
    wheel = str(bfcl.wheel_path())
    sys.path.insert(0, wheel)
    try:
        import bfcl_eval.constants  # noqa: F401  (the parent package of the stub)

        registry = types.ModuleType("bfcl_eval.constants.model_config")
        registry.MODEL_CONFIG_MAPPING = _AnyModel()  # type: ignore[attr-defined]
        sys.modules["bfcl_eval.constants.model_config"] = registry
        from bfcl_eval.constants.enums import Language
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker
    finally:
        sys.path.remove(wheel)

    def check(entry: dict[str, Any], calls: list[Call], possible: list[dict[str, Any]], category: str) -> bool:
        output = [{name: dict(args)} for name, args in calls]
        return bool(ast_checker(entry["function"], output, possible, Language.PYTHON, category, "model")["valid"])

    yield check


class _AnyModel(dict[str, Any]):
    def __getitem__(self, key: str) -> Any:
        return types.SimpleNamespace(underscore_to_dot=True)


def cases(category: str) -> list[tuple[dict[str, Any], dict[str, Tool], list[dict[str, Any]]]]:
    answers = bfcl.load_possible_answers(category)
    return [(e, {t.name: t for t in map(bfcl.to_tool, e["function"])}, answers[e["id"]])
            for e in bfcl.load_category(category)]  # fmt: skip


def answer_calls(possible: list[dict[str, Any]], tools: dict[str, Tool]) -> list[Call]:
    """The possible answer written as calls: the first acceptable value of each argument, an
    optional one ("" listed) left out unless the doc requires it."""
    calls: list[Call] = []
    for answer in possible:
        ((name, params),) = answer.items()
        required = tools[bfcl_name(name)].parameters.get("required", [])
        args = {k: _value(_first(vals)) for k, vals in params.items()
                if _first(vals) is not _NONE and ("" not in vals or k in required)}  # fmt: skip
        calls.append((bfcl_name(name), args))
    return calls


_NONE = object()


def _first(values: list[Any]) -> Any:
    """The first acceptable value that is not "" (None is one: JSON null), else _NONE."""
    return next((v for v in values if v != ""), _NONE)


def _value(answer: Any) -> Any:
    # A dict argument's answer lists acceptable values per key (one level deep, as BFCL checks).
    if isinstance(answer, dict):
        return {k: copy.deepcopy(_first(vals)) for k, vals in answer.items() if "" not in vals}
    if isinstance(answer, list) and answer and all(isinstance(x, dict) for x in answer):
        return [_value(x) for x in answer]
    return copy.deepcopy(answer)


def mutations(calls: list[Call], tools: dict[str, Tool]) -> Iterator[tuple[str, list[Call]]]:
    """Answers that must fail: a wrong value, a missing required argument, a wrong function,
    a missing or an extra call."""
    name, args = calls[0]
    if args:
        key = next(iter(args))
        yield "wrong_value", [(name, {**args, key: _wrong(args[key])}), *calls[1:]]
    required = [k for k in tools[name].parameters.get("required", []) if k in args]
    if required:
        yield "missing_required", [(name, {k: v for k, v in args.items() if k != required[0]}), *calls[1:]]
    yield "wrong_function", [(name + "_x", args), *calls[1:]]
    yield "extra_call", [*calls, calls[0]]
    if len(calls) > 1:
        yield "missing_call", calls[1:]


def _wrong(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1000.5 if isinstance(value, float) else value + 1001
    if isinstance(value, str):
        return "zq " + value
    if isinstance(value, list):
        return [*value, value[0]] if value else ["zq"]
    if isinstance(value, dict):
        return {**value, "zq_extra": 1}
    return "zq"


@pytest.mark.parametrize("category", AST_CATEGORIES)
def test_every_possible_answer_matches_itself(category: str, bfcl_checker: Checker) -> None:
    matched = 0
    for entry, tools, possible in cases(category):
        calls = answer_calls(possible, tools)
        ok = match_calls(tools, calls, possible)
        if entry["id"] in UNSATISFIABLE:
            assert not ok.ok and not bfcl_checker(entry, calls, possible, category), entry["id"]
            continue
        assert ok.ok, (entry["id"], ok.error)
        matched += 1
    assert matched >= len(cases(category)) - 3


@pytest.mark.parametrize("category", AST_CATEGORIES)
def test_mutated_answers_fail_and_bfcl_agrees(category: str, bfcl_checker: Checker) -> None:
    seen: set[str] = set()
    for entry, tools, possible in cases(category):
        if entry["id"] in UNSATISFIABLE:
            continue
        for kind, calls in mutations(answer_calls(possible, tools), tools):
            result = match_calls(tools, calls, possible)
            assert not result.ok, (entry["id"], kind, calls)
            assert result.error, (entry["id"], kind)
            assert not bfcl_checker(entry, calls, possible, category), (entry["id"], kind)
            seen.add(kind)
    assert {"wrong_value", "missing_required", "wrong_function", "extra_call"} <= seen


@pytest.mark.parametrize("category", AST_CATEGORIES)
def test_agrees_with_bfcl_on_answer_variants(category: str, bfcl_checker: Checker) -> None:
    """Beyond first values: every acceptable value of each argument, and all optional
    arguments written out, scored by both checkers."""
    compared = 0
    for entry, tools, possible in cases(category):
        for calls in _variants(possible, tools):
            assert match_calls(tools, calls, possible).ok == bfcl_checker(entry, calls, possible, category), (
                entry["id"],
                calls,
            )
            compared += 1
    assert compared > len(cases(category))


def _variants(possible: list[dict[str, Any]], tools: dict[str, Tool]) -> Iterator[list[Call]]:
    base = answer_calls(possible, tools)
    for i, answer in enumerate(possible):
        ((_, params),) = answer.items()
        name, args = base[i]
        for key, values in params.items():
            for value in values[1:]:
                if value != "":
                    yield [*base[:i], (name, {**args, key: _value(value)}), *base[i + 1 :]]
        everything = {k: _value(_first(v)) for k, v in params.items() if _first(v) is not _NONE}
        yield [*base[:i], (name, everything), *base[i + 1 :]]
    # int for float, and the same values in another case and punctuation (BFCL standardises).
    yield [(n, {k: _loosen(v) for k, v in a.items()}) for n, a in base]


def _loosen(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return value.upper().replace(" ", "_")
    return value


def test_string_int_and_optional_rules_by_hand() -> None:
    tool = Tool("book", parameters={"type": "object", "properties": {
        "city": {"type": "string"}, "nights": {"type": "integer"}, "price": {"type": "number"},
        "tags": {"type": "array", "items": {"type": "string"}}}, "required": ["city"]})  # fmt: skip
    tools = {"book": tool}
    possible = [{"book": {"city": ["New York", "NYC"], "nights": ["", 2], "price": [100.0], "tags": [["a b"], ""]}}]
    assert match_calls(tools, [("book", {"city": "new-york", "price": 100, "tags": ["A_B"]})], possible).ok
    assert match_calls(tools, [("book", {"city": "NYC", "nights": 2, "price": 100.0})], possible).ok
    no_float_for_int = {"city": "NYC", "nights": 2.0, "price": 100.0}
    assert not match_calls(tools, [("book", no_float_for_int)], possible).ok
    assert not match_calls(tools, [("book", {"city": "NYC"})], possible).ok  # price not optional
    assert not match_calls(tools, [("book", {"city": "NYC", "price": 100, "nights": True})], possible).ok
    assert match_calls(tools, [], []).ok and not match_calls(tools, [], possible).ok
