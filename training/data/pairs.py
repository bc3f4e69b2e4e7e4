"""Near-miss preference pairs for DPO, made from canonical records.

From a record whose answer is a call: chosen = the correct call, rejected = the same call with one
realistic mistake (a wrong value, a wrong type, a missing required argument, an extra argument,
a distractor function); from one with several calls, as often the answer stopped after the first
of them (how small models miss parallel requests) and, from a record with one call, as often
that call followed by a call to another declared tool (the same mistake the other way: pairs in
both directions on the count of calls, so that DPO learns when to go on, not to go on). From a
no-tool record: chosen = the text answer, rejected = a plausible call (on an out-of-scope
request, or with invented arguments on an underspecified one). Values for mistakes come from the
schemas and from values seen in other records, never from thin air.
"""

from __future__ import annotations

import copy
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from training.data.mistakes import off_by_digit
from training.data.records import ChatMessage, Record, ToolSpec

PAIR_KINDS = (
    "wrong_value",
    "wrong_type",
    "missing_arg",
    "extra_arg",
    "wrong_function",
    "missing_call",
    "extra_call",
    "call_on_irrelevant",
    "call_on_underspecified",
)
Json = dict[str, Any]
_Seen = dict[tuple[str, str], list[Any]]  # (tool, argument) -> values seen in records


@dataclass(frozen=True)
class Pair:
    messages: list[Json]  # the prompt
    tools: list[Json]
    chosen: Json
    rejected: Json
    meta: Json  # {"kind", "source"}

    def to_json(self) -> Json:
        return {
            "messages": self.messages,
            "tools": self.tools,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "meta": self.meta,
        }


def near_miss_pairs(records: Sequence[Record], seed: int) -> list[Pair]:
    """At most one pair per record (its kind drawn among the mistakes that apply), deterministic."""
    rng = random.Random(seed)
    seen = _seen_values(records)
    pairs = []
    for record in records:
        rejected = _rejected(record, seen, rng)
        if rejected is None:
            continue
        kind, message = rejected
        pairs.append(_pair(record, kind, message))
    return pairs


def _pair(record: Record, kind: str, rejected: Json) -> Pair:
    dump = [_as_message(m) for m in record.messages]
    tools = [t.model_dump(mode="json") for t in record.tools]
    return Pair(dump[:-1], tools, _as_message(record.answer), rejected, {"kind": kind, "source": record.meta.id})


def _as_message(message: ChatMessage) -> Json:
    out = message.model_dump(mode="json", exclude_none=True)
    out.setdefault("content", None)
    return out


def _seen_values(records: Sequence[Record]) -> _Seen:
    seen: _Seen = defaultdict(list)
    for record in records:
        for message in record.messages:
            if message.train is False:
                continue
            for call in message.tool_calls or ():
                for name, value in call.function.arguments.items():
                    values = seen[(call.function.name, name)]
                    if len(values) < 64 and value not in values:  # a sample is enough; keeps this linear
                        values.append(value)
    return seen


def _rejected(record: Record, seen: _Seen, rng: random.Random) -> tuple[str, Json] | None:
    answer = record.answer
    if not record.tools:
        return None
    if not answer.tool_calls:
        if record.kind not in ("no_tool_irrelevant", "clarify"):
            return None  # chit-chat: a call there is not a near miss worth a pair
        call = _plausible_call(rng.choice(record.tools), seen, rng)
        kind = "call_on_irrelevant" if record.kind == "no_tool_irrelevant" else "call_on_underspecified"
        return (kind, _calls_message([call])) if call else None
    calls = [c.model_dump(mode="json") for c in answer.tool_calls]
    if len(calls) > 1 and rng.random() < 0.5:
        return "missing_call", _calls_message(calls[: rng.randrange(1, len(calls))])
    if len(calls) == 1 and len(record.tools) > 1 and rng.random() < _EXTRA_CALL_SHARE:
        extra = _extra_call(calls[0], record, seen, rng)
        if extra is not None:
            return "extra_call", _calls_message([*calls, extra])
    i = rng.randrange(len(calls))
    tool = next(t for t in record.tools if t.function.name == calls[i]["function"]["name"])
    mistakes = [(kind, fn) for kind, fn in _MISTAKES.items()]
    rng.shuffle(mistakes)
    for kind, mistake in mistakes:
        wrong = mistake(copy.deepcopy(calls[i]), tool, record, seen, rng)
        if wrong is not None and wrong != calls[i]:
            return kind, _calls_message(calls[:i] + [wrong] + calls[i + 1 :])
    return None


# Of the single-call records that declare another tool, the share whose pair is an extra call:
# about as many as the `missing_call` pairs (half the parallel records) in the generator's mix, so
# that DPO on the count pairs pulls towards neither more nor fewer calls (docs/demo.md).
_EXTRA_CALL_SHARE = 0.3


def _extra_call(call: Json, record: Record, seen: _Seen, rng: random.Random) -> Json | None:
    """A plausible call to another declared tool, to follow `call` where one call was asked for."""
    others = [t for t in record.tools if t.function.name != call["function"]["name"]]
    return _plausible_call(rng.choice(others), seen, rng) if others else None


def _calls_message(calls: list[Json]) -> Json:
    return {"role": "assistant", "content": None, "tool_calls": calls}


def _props(tool: ToolSpec) -> dict[str, Json]:
    props: dict[str, Json] = tool.function.parameters.get("properties", {})
    return props


def _wrong_value(call: Json, tool: ToolSpec, record: Record, seen: _Seen, rng: random.Random) -> Json | None:
    args = call["function"]["arguments"]
    names = [n for n in args if not isinstance(args[n], bool)]
    rng.shuffle(names)
    for name in names:
        value, schema = args[name], _props(tool).get(name, {})
        if isinstance(value, str) and value.isdigit() and len(value) > 1:
            args[name] = off_by_digit(rng, value, drop=False)  # the classic copying failure
            return call
        others = [v for v in schema.get("enum", []) + seen.get((tool.function.name, name), []) if v != value]
        others = [v for v in others if type(v) is type(value)]
        if others:
            args[name] = rng.choice(others)
            return call
        if isinstance(value, int):
            args[name] = value + rng.choice((-1, 1)) * rng.randint(1, 9)
            return call
    return None


def _wrong_type(call: Json, tool: ToolSpec, record: Record, seen: _Seen, rng: random.Random) -> Json | None:
    args = call["function"]["arguments"]
    for name in rng.sample(list(args), len(args)):
        value = args[name]
        if isinstance(value, bool):
            args[name] = str(value).lower()
        elif isinstance(value, (int, float)):
            args[name] = str(value)
        elif isinstance(value, str) and value.lstrip("-").isdigit():
            args[name] = int(value)  # an id sent as a number loses leading zeros and the schema
        elif isinstance(value, list) and value:
            args[name] = value[0]
        else:
            continue
        return call
    return None


def _missing_arg(call: Json, tool: ToolSpec, record: Record, seen: _Seen, rng: random.Random) -> Json | None:
    args = call["function"]["arguments"]
    required = [r for r in tool.function.parameters.get("required", []) if r in args]
    if not required:
        return None
    del args[rng.choice(required)]
    return call


def _extra_arg(call: Json, tool: ToolSpec, record: Record, seen: _Seen, rng: random.Random) -> Json | None:
    args = call["function"]["arguments"]
    unused = [n for n in _props(tool) if n not in args]
    if unused and rng.random() < 0.5:
        name = rng.choice(unused)  # an optional argument the user never asked for
        values = seen.get((tool.function.name, name)) or _props(tool)[name].get("enum") or []
        if values:
            args[name] = rng.choice(values)
            return call
    if tool.function.parameters.get("additionalProperties") is False or rng.random() < 0.5:
        args[rng.choice(("notes", "user_id", "confirm", "priority"))] = rng.choice(("yes", True, 1, "high"))
        return call
    return None


def _wrong_function(call: Json, tool: ToolSpec, record: Record, seen: _Seen, rng: random.Random) -> Json | None:
    others = [t for t in record.tools if t.function.name != tool.function.name]
    if not others:
        return None
    other = rng.choice(others)
    plausible = _plausible_call(other, seen, rng)
    if plausible is None:
        return None
    shared = {k: v for k, v in call["function"]["arguments"].items() if k in _props(other)}
    plausible["function"]["arguments"].update(shared)  # keep what the user said where it fits
    plausible["id"] = call["id"]
    return plausible


def _plausible_call(tool: ToolSpec, seen: _Seen, rng: random.Random) -> Json | None:
    """A call of `tool` with its required arguments filled from values seen or the schema."""
    args: Json = {}
    for name in tool.function.parameters.get("required", []):
        schema = _props(tool).get(name, {})
        values = seen.get((tool.function.name, name)) or schema.get("enum") or _default(schema)
        if not values:
            return None
        args[name] = rng.choice(values)
    call_id = "call_" + "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=9))
    return {"id": call_id, "type": "function", "function": {"name": tool.function.name, "arguments": args}}


_DEFAULTS: dict[str, list[Any]] = {"integer": [1], "number": [1.0], "boolean": [True], "string": ["unknown"]}


def _default(schema: Json) -> list[Any]:
    return _DEFAULTS.get(str(schema.get("type", "")), [])


_MISTAKES = {
    "wrong_value": _wrong_value,
    "wrong_type": _wrong_type,
    "missing_arg": _missing_arg,
    "extra_arg": _extra_arg,
    "wrong_function": _wrong_function,
}
