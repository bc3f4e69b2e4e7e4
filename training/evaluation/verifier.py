"""The tool-calling verifier: one model answer scored against what was expected, and the
four-number summary of many. Answers are parsed exactly as serving parses them (the format's
parser from server.toolcalls) and validated by the gateway's own validation, so a call the
gateway would refuse never scores as correct. Knows nothing of models, backends or files.

Per record, with E = the expected calls (none for negatives: irrelevant, chitchat, clarify):

- called: the answer holds at least one call attempt (a parsed call, broken or not, or a call
  cut off at the end).
- valid: called, nothing cut off, every call names a declared tool and its arguments validate
  against that tool's JSON Schema (server.toolcalls.validation).
- name_ok: every call could be read (its JSON parsed, nothing cut off) and the called names
  equal E's names as multisets (parallel calls in any order).
- args_ok: valid and name_ok and the arguments match: exactly after JSON normalisation (key
  order, 1 == 1.0), or BFCL-style against `possible_answers` (training.evaluation.bfcl_ast).

The four numbers over a set of records:

- valid-tool-call rate: among records where a call is expected, the share with `valid`.
- tool-name accuracy: among records where a call is expected, the share with `name_ok`.
- argument-match accuracy: among expected-call records whose answer is valid with the right
  names, the share with `args_ok`.
- false-tool-call rate: among records where no call is expected, the share with `called`.

Per argument (`argument_hits`), on those same valid, right-named answers: whether each
expected argument of each expected call has its expected value, calls of one name paired in
order. It tells a value the model could copy from the request (an order id) from one it has to
infer (a reason chosen from an enum).

Graded reward (RAFT): 1.0 right names and arguments; 0.5 right names, wrong (or invalid)
arguments; 0.25 valid calls of the wrong functions; 0.0 no call, or invalid calls of the wrong
functions, when calls were expected; -0.25 any call when none should be made; 1.0 no call
when none should be made.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from server.toolcalls import Parsed, ParsedCall, ToolFormat, get_format
from server.toolcalls.loose import reads_as_text
from server.toolcalls.validation import validate_call
from server.types import Tool
from training.data.records import server_tools
from training.evaluation.bfcl_ast import PossibleAnswer, bfcl_name, match_calls

if TYPE_CHECKING:
    from training.data.records import Record

REWARD_CORRECT = 1.0
REWARD_RIGHT_NAME = 0.5
REWARD_WRONG_NAME = 0.25
REWARD_MISSED = 0.0
REWARD_FALSE_CALL = -0.25
REWARD_NO_CALL_OK = 1.0


@dataclass(frozen=True)
class ExpectedCall:
    name: str
    arguments: Mapping[str, Any]


@dataclass(frozen=True)
class Expected:
    """What a right answer does: these `calls`; or calls matching BFCL-style `possible`
    answers; or any valid call (`any_call`, BFCL's relevance); or, all empty, no call."""

    calls: tuple[ExpectedCall, ...] = ()
    possible: tuple[PossibleAnswer, ...] = ()
    any_call: bool = False

    @property
    def expects_call(self) -> bool:
        return bool(self.calls or self.possible or self.any_call)

    def names(self) -> Counter[str] | None:
        """The expected function names as a multiset; None when any call will do."""
        if self.possible:
            return Counter(bfcl_name(next(iter(answer))) for answer in self.possible)
        return None if self.any_call else Counter(c.name for c in self.calls)


@dataclass(frozen=True)
class Verdict:
    """One answer scored. `name_ok` and `args_ok` are None where they mean nothing (no call
    expected, or any call will do)."""

    reward: float
    valid: bool
    name_ok: bool | None
    args_ok: bool | None
    called: bool
    expected_call: bool
    calls: tuple[ParsedCall, ...]
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["calls"] = [{"name": c.name, "arguments": c.arguments, "error": c.error} for c in self.calls]
        return out

    @property
    def correct(self) -> bool:
        """Fully correct: right calls with right arguments, or rightly no call."""
        return bool(self.args_ok) if self.expected_call else not self.called


class ToolCallingVerifier:
    """Scores answers written in one tool-call format (a name from server.toolcalls or a format)."""

    def __init__(self, tool_format: str | ToolFormat) -> None:
        self.format = get_format(tool_format) if isinstance(tool_format, str) else tool_format

    def score(self, tools: Sequence[Tool], expected: Expected, completion: str) -> Verdict:
        """Score raw model text: parsed by the format's parser, as the gateway parses it."""
        return self.score_parsed(tools, expected, self.format.parse(completion))

    def score_record(self, record: Record, completion: str) -> Verdict:
        """Score raw model text against a canonical record's expected answer (its last message)."""

        return self.score(server_tools(record), expected_of(record), completion)

    def score_parsed(self, tools: Sequence[Tool], expected: Expected, parsed: Parsed) -> Verdict:
        """Score an answer already split into content and calls (e.g. an endpoint's message)."""
        return verdict(tools, expected, parsed)


def verdict(tools: Sequence[Tool], expected: Expected, parsed: Parsed) -> Verdict:
    declared = {t.name: t for t in tools}
    calls = tuple(c for c in parsed.calls if not reads_as_text(c, declared))
    called = bool(calls) or parsed.unclosed
    problems = [p for p in (validate_call(c, declared) for c in calls) if p]
    if parsed.unclosed:
        problems.insert(0, "the answer ended inside a call")
    valid = called and not problems
    error = problems[0] if problems else None
    if not expected.expects_call:
        reward = REWARD_FALSE_CALL if called else REWARD_NO_CALL_OK
        return Verdict(reward, valid, None, None, called, False, calls, error)
    names = expected.names()
    if names is None:  # any valid call is right
        return Verdict(REWARD_CORRECT if valid else REWARD_MISSED, valid, None, None, called, True, calls, error)
    readable = called and not parsed.unclosed and all(c.error is None for c in calls)
    name_ok = readable and Counter(c.name for c in calls) == names
    args_ok = valid and name_ok and _arguments_match(declared, expected, calls)
    if not args_ok and error is None and valid and name_ok:
        error = "arguments differ from the expected ones"
    return Verdict(_reward(called, valid, name_ok, args_ok), valid, name_ok, args_ok, called, True, calls, error)


def _reward(called: bool, valid: bool, name_ok: bool, args_ok: bool) -> float:
    if args_ok:
        return REWARD_CORRECT
    if name_ok:
        return REWARD_RIGHT_NAME
    if called and valid:
        return REWARD_WRONG_NAME
    return REWARD_MISSED


def _arguments_match(declared: Mapping[str, Tool], expected: Expected, calls: Sequence[ParsedCall]) -> bool:
    decoded = [(c.name, json.loads(c.arguments)) for c in calls]
    if expected.possible:
        return match_calls(declared, decoded, expected.possible).ok
    got = Counter((name, canonical_json(args)) for name, args in decoded)
    return got == Counter((c.name, canonical_json(c.arguments)) for c in expected.calls)


def argument_hits(expected: Expected, calls: Sequence[ParsedCall]) -> list[tuple[str, bool]]:
    """("tool.argument", right) for every argument of every expected call, the answer's calls of
    the same name taken in order; a missing call or argument is wrong. BFCL-style expectations
    (several acceptable values) give nothing."""
    answered: dict[str, list[Any]] = {}
    for call in calls:
        try:
            arguments = json.loads(call.arguments)
        except json.JSONDecodeError:
            arguments = None
        answered.setdefault(call.name, []).append(arguments if isinstance(arguments, dict) else {})
    hits = []
    for want in expected.calls:
        same = answered.get(want.name) or [{}]
        got = same.pop(0)
        for key, value in want.arguments.items():
            hits.append((f"{want.name}.{key}", key in got and canonical_json(got[key]) == canonical_json(value)))
    return hits


def canonical_json(value: Any) -> str:
    """JSON text that is equal for equal values: keys sorted, integral floats written as ints
    (1.0 == 1), booleans kept apart from numbers."""
    return json.dumps(_canonical(value), sort_keys=True, ensure_ascii=False)


def _canonical(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def expected_of(record: Record) -> Expected:
    """The expected answer of a canonical record: its `meta.possible_answers` when present,
    else the calls of its last (assistant) message, else no call."""
    possible = getattr(record.meta, "possible_answers", None)
    if possible:
        return Expected(possible=tuple(possible))
    calls = record.answer.tool_calls or []
    return Expected(calls=tuple(ExpectedCall(c.function.name, c.function.arguments) for c in calls))


@dataclass(frozen=True)
class Scores:
    """The four rates and the mean reward (None when their denominator is empty), with the
    denominators of the rates."""

    valid_call_rate: float | None
    tool_name_accuracy: float | None
    argument_match: float | None
    false_call_rate: float | None
    mean_reward: float | None
    records: int
    expected_call: int  # denominator of the valid-call rate
    named: int  # denominator of the name accuracy (expected-call records with expected names)
    args_checked: int  # denominator of the argument match (valid, right names)
    no_call: int  # denominator of the false-call rate

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def aggregate(verdicts: Iterable[Verdict]) -> Scores:
    """The scores over `verdicts` (definitions in the module docstring)."""
    items = list(verdicts)
    positive = [v for v in items if v.expected_call]
    named = [v for v in positive if v.name_ok is not None]
    checked = [v for v in named if v.valid and v.name_ok]
    negative = [v for v in items if not v.expected_call]
    return Scores(
        valid_call_rate=_share(v.valid for v in positive),
        tool_name_accuracy=_share(bool(v.name_ok) for v in named),
        argument_match=_share(bool(v.args_ok) for v in checked),
        false_call_rate=_share(v.called for v in negative),
        mean_reward=sum(v.reward for v in items) / len(items) if items else None,
        records=len(items),
        expected_call=len(positive),
        named=len(named),
        args_checked=len(checked),
        no_call=len(negative),
    )


def _share(flags: Iterable[bool]) -> float | None:
    values = list(flags)
    return sum(values) / len(values) if values else None
