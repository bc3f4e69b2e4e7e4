"""The verifier scores answers as the gateway parses and validates them, with the graded
reward of the issue, and the four numbers add up as defined."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.toolcalls import get_format
from server.toolcalls.base import Parsed, ParsedCall
from server.types import Tool, ToolCall
from training.data.records import parse_record
from training.evaluation.verifier import (
    Expected,
    ExpectedCall,
    ToolCallingVerifier,
    Verdict,
    aggregate,
    argument_hits,
    canonical_json,
    expected_of,
)

WEATHER = Tool("get_weather", "Weather in a city.", {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
    "required": ["city"],
})  # fmt: skip
TRACK = Tool("track_order", "Where an order is.", {
    "type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"],
})  # fmt: skip
TOOLS = [WEATHER, TRACK]
HERMES = get_format("hermes")
VERIFIER = ToolCallingVerifier("hermes")
PARIS = Expected(calls=(ExpectedCall("get_weather", {"city": "Paris", "days": 2}),))
NO_CALL = Expected()


def said(*calls: tuple[str, Any], content: str | None = None) -> str:
    """Model text in the Hermes format (the gateway's own renderer)."""
    rendered = [ToolCall(n, a if isinstance(a, str) else json.dumps(a)) for n, a in calls]
    return HERMES.render(content, rendered)


def test_right_call_scores_one() -> None:
    v = VERIFIER.score(TOOLS, PARIS, said(("get_weather", {"days": 2, "city": "Paris"})))
    assert (v.reward, v.valid, v.name_ok, v.args_ok, v.called, v.expected_call) == (1.0, True, True, True, True, True)
    assert v.correct and v.error is None
    assert v.calls == (ParsedCall("get_weather", '{"days": 2, "city": "Paris"}'),)


def test_numbers_compare_by_value_after_json_normalisation() -> None:
    assert VERIFIER.score(TOOLS, PARIS, said(("get_weather", {"city": "Paris", "days": 2.0}))).args_ok
    assert canonical_json({"b": [1.0, True], "a": 1}) == '{"a": 1, "b": [1, true]}'
    assert canonical_json(True) != canonical_json(1)


def test_right_function_wrong_value_scores_half() -> None:
    v = VERIFIER.score(TOOLS, PARIS, said(("get_weather", {"city": "paris", "days": 2})))
    assert (v.reward, v.valid, v.name_ok, v.args_ok) == (0.5, True, True, False)
    assert v.error == "arguments differ from the expected ones" and not v.correct


def test_schema_invalid_arguments_are_not_valid() -> None:
    # days must be >= 1: the gateway's validation refuses it, so it can never score correct.
    v = VERIFIER.score(TOOLS, PARIS, said(("get_weather", {"city": "Paris", "days": 0})))
    assert (v.reward, v.valid, v.name_ok, v.args_ok) == (0.5, False, True, False)
    assert v.error is not None and "days" in v.error


def test_valid_call_of_the_wrong_function_scores_a_quarter() -> None:
    v = VERIFIER.score(TOOLS, PARIS, said(("track_order", {"order_id": "A1"})))
    assert (v.reward, v.valid, v.name_ok, v.args_ok) == (0.25, True, False, False)


def test_undeclared_function_scores_zero() -> None:
    v = VERIFIER.score(TOOLS, PARIS, said(("get_wether", {"city": "Paris"})))
    assert (v.reward, v.valid, v.called) == (0.0, False, True)
    assert v.error is not None and "unknown tool" in v.error


def test_no_call_when_one_was_expected_scores_zero() -> None:
    v = VERIFIER.score(TOOLS, PARIS, "It is sunny in Paris.")
    assert (v.reward, v.valid, v.name_ok, v.args_ok, v.called) == (0.0, False, False, False, False)


def test_broken_and_cut_calls_are_attempts_but_not_valid() -> None:
    broken = VERIFIER.score(TOOLS, PARIS, '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>')
    assert broken.called and not broken.valid and broken.reward == 0.0
    cut = VERIFIER.score(TOOLS, PARIS, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par')
    assert cut.called and not cut.valid and cut.error == "the answer ended inside a call"
    # ...and on a negative both count as false calls.
    assert VERIFIER.score(TOOLS, NO_CALL, '<tool_call>\n{"name": "get_weather"').reward == -0.25


def test_negatives_reward_abstaining() -> None:
    right = VERIFIER.score(TOOLS, NO_CALL, "Which city do you mean?")
    assert (right.reward, right.called, right.name_ok, right.args_ok, right.correct) == (1.0, False, None, None, True)
    wrong = VERIFIER.score(TOOLS, NO_CALL, said(("get_weather", {"city": "Paris"})))
    assert (wrong.reward, wrong.called, wrong.valid, wrong.correct) == (-0.25, True, True, False)


def test_parallel_calls_match_in_any_order_as_multisets() -> None:
    paris, rome = ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})
    expected = Expected(calls=(ExpectedCall(*paris), ExpectedCall(*rome)))
    swapped = VERIFIER.score(TOOLS, expected, said(rome, paris))
    assert swapped.args_ok and swapped.reward == 1.0
    twice = VERIFIER.score(TOOLS, expected, said(rome, rome))
    assert twice.name_ok and not twice.args_ok and twice.reward == 0.5
    one = VERIFIER.score(TOOLS, expected, said(rome))
    assert not one.name_ok and one.reward == 0.25


def test_parsing_follows_the_gateway_think_rule() -> None:
    # A call inside a leading <think> block is reasoning, never executed: not a call.
    text = "<think>" + said(("get_weather", {"city": "Paris", "days": 2})) + "</think>Let me check."
    assert not VERIFIER.score(TOOLS, PARIS, text).called


def test_other_formats_parse_with_their_own_parser() -> None:
    pythonic = ToolCallingVerifier("pythonic")
    assert pythonic.score(TOOLS, PARIS, '[get_weather(city="Paris", days=2)]').reward == 1.0
    assert pythonic.score(TOOLS, PARIS, said(("get_weather", {"city": "Paris", "days": 2}))).reward == 0.0


def test_possible_answers_accept_any_listed_value_and_optional_omission() -> None:
    expected = Expected(possible=({"get_weather": {"city": ["Paris", "Paris, France"], "days": ["", 2]}},))
    for args in ({"city": "paris, france"}, {"city": "Paris", "days": 2}):
        assert VERIFIER.score(TOOLS, expected, said(("get_weather", args))).args_ok, args
    wrong = VERIFIER.score(TOOLS, expected, said(("get_weather", {"city": "Lyon"})))
    assert wrong.name_ok and not wrong.args_ok


def test_any_call_expectation_needs_only_a_valid_call() -> None:
    expected = Expected(any_call=True)
    assert VERIFIER.score(TOOLS, expected, said(("track_order", {"order_id": "A"}))).reward == 1.0
    assert VERIFIER.score(TOOLS, expected, "no").reward == 0.0


def test_score_parsed_takes_an_endpoint_answer() -> None:
    parsed = Parsed("", (ParsedCall("get_weather", '{"city": "Paris", "days": 2}'),))
    assert VERIFIER.score_parsed(TOOLS, PARIS, parsed).reward == 1.0
    refused = Parsed("", (ParsedCall("get_weather", "{}", error="arguments do not match"),))
    assert not VERIFIER.score_parsed(TOOLS, PARIS, refused).valid


def _record(answer: dict[str, Any], **meta: Any) -> Any:
    return parse_record({
        "messages": [{"role": "user", "content": "Weather in Paris for 2 days?"}, answer],
        "tools": [{"type": "function", "function": {"name": t.name, "parameters": t.parameters}} for t in TOOLS],
        "meta": {"id": "r1", "kind": "single" if "tool_calls" in answer else "no_tool_chitchat",
                 "source": "test", **meta},
    })  # fmt: skip


def test_records_give_their_last_message_as_expected() -> None:
    arguments = {"city": "Paris", "days": 2}
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    record = _record({"role": "assistant", "content": None, "tool_calls": [call]})
    assert expected_of(record) == PARIS
    assert VERIFIER.score_record(record, said(("get_weather", {"city": "Paris", "days": 2}))).reward == 1.0
    negative = _record({"role": "assistant", "content": "Hello!"})
    assert not expected_of(negative).expects_call
    bfcl_like = _record(
        {"role": "assistant", "content": None, "tool_calls": [call]},
        possible_answers=[{"get_weather": {"city": ["Paris"], "days": ["", 2, 3]}}],
    )
    assert VERIFIER.score_record(bfcl_like, said(("get_weather", {"city": "Paris", "days": 3}))).args_ok


def _v(reward: float, *, valid: bool, name: bool | None, args: bool | None, called: bool, expected: bool) -> Verdict:
    return Verdict(reward, valid, name, args, called, expected, ())


def test_aggregate_computes_the_four_numbers_over_their_own_denominators() -> None:
    verdicts = [
        _v(1.0, valid=True, name=True, args=True, called=True, expected=True),
        _v(0.5, valid=True, name=True, args=False, called=True, expected=True),
        _v(0.5, valid=False, name=True, args=False, called=True, expected=True),  # not in args denominator
        _v(0.0, valid=False, name=False, args=False, called=False, expected=True),
        _v(1.0, valid=True, name=None, args=None, called=True, expected=True),  # any call: not named
        _v(1.0, valid=False, name=None, args=None, called=False, expected=False),
        _v(-0.25, valid=True, name=None, args=None, called=True, expected=False),
        _v(1.0, valid=False, name=None, args=None, called=False, expected=False),
    ]
    four = aggregate(verdicts)
    assert (four.expected_call, four.named, four.args_checked, four.no_call, four.records) == (5, 4, 2, 3, 8)
    assert four.valid_call_rate == pytest.approx(3 / 5)
    assert four.tool_name_accuracy == pytest.approx(3 / 4)
    assert four.argument_match == pytest.approx(1 / 2)
    assert four.false_call_rate == pytest.approx(1 / 3)
    assert four.mean_reward == pytest.approx(4.75 / 8)


def test_aggregate_of_nothing_is_none_not_zero() -> None:
    four = aggregate([])
    assert four.valid_call_rate is None and four.false_call_rate is None and four.mean_reward is None
    only_negatives = aggregate([_v(1.0, valid=False, name=None, args=None, called=False, expected=False)])
    assert only_negatives.false_call_rate == 0.0 and only_negatives.valid_call_rate is None


def test_argument_hits_tell_each_argument_apart() -> None:
    expected = Expected(calls=(ExpectedCall("get_weather", {"city": "Paris", "days": 2}),
                               ExpectedCall("track_order", {"order_id": "1234"}),
                               ExpectedCall("track_order", {"order_id": "5678"})))  # fmt: skip
    calls = (ParsedCall("track_order", '{"order_id": "1234"}'),
             ParsedCall("get_weather", '{"city": "Paris", "days": 2.0}'),
             ParsedCall("track_order", '{"order_id": "5679"}'))  # fmt: skip
    assert argument_hits(expected, calls) == [
        ("get_weather.city", True), ("get_weather.days", True),
        ("track_order.order_id", True), ("track_order.order_id", False)]  # fmt: skip
    missing = argument_hits(expected, (ParsedCall("get_weather", '{"city": "Oslo"}'),))
    assert missing == [("get_weather.city", False), ("get_weather.days", False),
                       ("track_order.order_id", False), ("track_order.order_id", False)]  # fmt: skip
    assert argument_hits(Expected(possible=({"f": {"x": [1]}},)), calls) == []
