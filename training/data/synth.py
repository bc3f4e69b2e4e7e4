"""The synthetic generator: tool catalogues -> canonical records of every kind, seeded.

Kinds: single and parallel calls, multi-turn (call, tool result, an answer that uses it; some
start with a clarifying question), error recovery (a wrong call kept out of the loss, the tool's
error, the corrected call), and no-tool negatives (out-of-scope requests with tools present,
chit-chat, underspecified requests answered with a question). Each example carries the relevant
tools plus distractors from the same catalogue, shuffled. `SynthConfig.part` restricts phrasings
and slot values to one split's share (catalogue.part_view), so test requests are worded apart.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from training.data.catalogue import (
    Catalogue,
    CatalogueError,
    Common,
    Intent,
    NoTool,
    Phrasing,
    ToolDef,
    catalogue_paths,
    common_view,
    holes,
    label,
    load_catalogue,
    load_common,
    part_view,
    required_slots,
)
from training.data.mistakes import rejected_calls
from training.data.phrasing import Drawn, Variants, as_text, draw, evaluate, fill, join_words, result_value, vary
from training.data.records import Record, parse_record, validation_reason

Json = dict[str, Any]


@dataclass(frozen=True)
class SynthConfig:
    """Mix of example kinds (relative weights) and generation knobs; defaults suit the demo."""

    single: float = 0.32
    parallel: float = 0.14
    multi_turn: float = 0.2
    error_recovery: float = 0.08
    no_tool_irrelevant: float = 0.11  # negatives (these three) total 0.26 by default
    no_tool_chitchat: float = 0.07
    clarify: float = 0.08
    max_distractors: int = 3  # extra tools from the same catalogue beside the relevant ones
    max_parallel: int = 3  # calls in one parallel request (2..max)
    second_round: float = 0.3  # multi-turn: chance of a second request after the first answer
    clarify_first: float = 0.25  # multi-turn: chance it opens with an underspecified request
    system_prompt: float = 0.5  # chance of the catalogue's own system prompt
    toolless_chitchat: float = 0.1  # chit-chat with no tools declared at all
    part: str | None = None  # "train" | "val" | "test": only that split's phrasings and values
    held_out_tools: tuple[str, ...] = ()  # tools that appear only when part == "test"
    holdout_fractions: tuple[float, float] = (0.1, 0.15)  # (val, test) share of phrasings / values
    variants: Variants = field(default_factory=Variants)

    def kind_weights(self) -> dict[str, float]:
        names = (
            "single",
            "parallel",
            "multi_turn",
            "error_recovery",
            "no_tool_irrelevant",
            "no_tool_chitchat",
            "clarify",
        )
        return {k: getattr(self, k) for k in names if getattr(self, k) > 0}


@dataclass(frozen=True)
class _World:
    catalogues: tuple[Catalogue, ...]
    common: Common
    config: SynthConfig
    rng: random.Random


@dataclass(frozen=True)
class _Call:
    """One intent instance: the request text, its call, and what the slots were."""

    intent: Intent
    text: str
    call: Json
    bound: dict[str, Drawn]
    template: str


def generate(catalogue_paths_: Sequence[Path], n: int, seed: int, config: SynthConfig | None = None) -> list[Record]:
    """`n` records from the catalogues (files or folders), deterministic in `seed`."""
    config = config or SynthConfig()
    world = _world(catalogue_paths_, seed, config)
    kinds, weights = zip(*config.kind_weights().items(), strict=True)
    records = []
    for i in range(n):
        kind = world.rng.choices(kinds, weights)[0]
        body = _example(world, kind)
        meta = {"id": f"synth-{config.part or 'all'}-{seed}-{i}", "kind": body.pop("kind"), **body.pop("meta")}
        records.append(_validated({**body, "meta": meta}))
    return records


def _world(paths: Sequence[Path], seed: int, config: SynthConfig) -> _World:
    files = catalogue_paths([Path(p) for p in paths])
    if not files:
        raise CatalogueError(f"no catalogue files in {[str(p) for p in paths]}")
    catalogues = [load_catalogue(p.resolve()) for p in files]
    known = {t for c in catalogues for t in c.tools}
    unknown = sorted(set(config.held_out_tools) - known)
    if unknown:
        raise CatalogueError(f"held-out tools {unknown} are in no catalogue; known: {', '.join(sorted(known))}")
    common = load_common()
    if config.part is not None:
        held = frozenset(config.held_out_tools)
        catalogues = [part_view(c, config.part, config.holdout_fractions, held) for c in catalogues]
        common = common_view(common, config.part, config.holdout_fractions)
    usable = tuple(c for c in catalogues if c.intents)
    if not usable:
        raise CatalogueError("the catalogues have no intents (all tools held out?)")
    return _World(usable, common, config, random.Random(seed))


def _validated(obj: Json) -> Record:
    try:
        return parse_record(obj)
    except ValidationError as exc:
        # Our own catalogues made it: a catalogue bug, reported loudly with the record.
        raise CatalogueError(
            f"generated an invalid record ({validation_reason(exc)}): {json.dumps(obj)[:600]}"
        ) from None


_BUILDERS: dict[str, Any] = {}  # kind -> builder(world, catalogue) -> body or None (filled below)


def _example(world: _World, kind: str) -> Json:
    for _ in range(8):
        cat = world.rng.choice(world.catalogues)
        body = _BUILDERS[kind](world, cat)
        if body is not None:
            return dict(body)
    return dict(_single(world, world.rng.choice(world.catalogues)))  # always possible


# ---- pieces ---------------------------------------------------------------------------------------


def _instance(world: _World, cat: Catalogue, intent: Intent, phrasing: Phrasing | None = None) -> _Call:
    rng = world.rng
    phrasing = phrasing or rng.choice(intent.phrasings)
    bound: dict[str, Drawn] = {}
    for name in sorted(phrasing.slots):
        bound[name] = _draw_distinct(cat, name, bound, rng)
    args = {k: evaluate(e, bound) for k, e in intent.args.items() if set(_arg_holes(e)) <= set(bound)}
    text = fill(vary(phrasing.text, rng, world.common, world.config.variants), {k: d.surface for k, d in bound.items()})
    call = {"id": _call_id(rng), "type": "function", "function": {"name": intent.tool, "arguments": args}}
    return _Call(intent, text, call, bound, phrasing.id)


def _draw_distinct(cat: Catalogue, name: str, bound: dict[str, Drawn], rng: random.Random) -> Drawn:
    """A slot's draw, redrawn (a few times) when a slot over the same pool already took that value:
    no "convert liters to liters" or "fly JFK to JFK"."""
    slot = cat.slots[name]
    taken = [d.value for k, d in bound.items() if slot.values and cat.slots[k].values == slot.values]
    drawn = draw(slot, cat.slots, rng)
    for _ in range(4):
        if drawn.value not in taken:
            break
        drawn = draw(slot, cat.slots, rng)
    return drawn


def _arg_holes(expr: Any) -> list[str]:
    if isinstance(expr, str):
        return holes(expr)
    if isinstance(expr, list):
        return [h for e in expr for h in _arg_holes(e)]
    return []


def _call_id(rng: random.Random) -> str:
    return "call_" + "".join(rng.choices(string.ascii_letters + string.digits, k=9))


def _tool_spec(tool: ToolDef) -> Json:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }


def _toolset(world: _World, cat: Catalogue, relevant: Sequence[str], at_least: int = 0) -> list[Json]:
    others = [t for t in cat.tools if t not in relevant]
    k = world.rng.randint(min(at_least, len(others)), min(world.config.max_distractors, len(others)))
    names = list(dict.fromkeys(relevant)) + world.rng.sample(others, k)
    world.rng.shuffle(names)
    return [_tool_spec(cat.tools[n]) for n in names]


def _opening(world: _World, cat: Catalogue) -> list[Json]:
    if cat.system and world.rng.random() < world.config.system_prompt:
        return [{"role": "system", "content": world.rng.choice(cat.system)}]
    return []


def _body(kind: str, messages: list[Json], tools: list[Json], cat: Catalogue, templates: list[str]) -> Json:
    called = [c["function"]["name"] for m in messages for c in m.get("tool_calls") or ()]
    meta = {"source": f"synth:{cat.name}", "templates": templates, "tools_called": called}
    return {"kind": kind, "messages": messages, "tools": tools, "meta": meta}


def _calls_message(calls: list[Json], content: str | None = None) -> Json:
    return {"role": "assistant", "content": content, "tool_calls": calls}


def _result_round(world: _World, cat: Catalogue, inst: _Call) -> list[Json]:
    """The tool's result for `inst` and the assistant's answer that uses it."""
    tool = cat.tools[inst.intent.tool]
    args = inst.call["function"]["arguments"]
    scope = inst.bound | {k: Drawn(as_text(v), v) for k, v in args.items()}  # a tool sees its arguments
    result = {
        k: result_value(e, scope, cat.slots, world.rng)
        for k, e in tool.result.items()
        if set(_arg_holes(e)) <= set(scope)
    }
    values = {k: as_text(d.value) for k, d in inst.bound.items()}
    values |= {f"result.{k}": as_text(v) for k, v in result.items()}
    usable = [a for a in inst.intent.answers if set(holes(a)) <= set(values)]
    answer = fill(world.rng.choice(usable or list(inst.intent.answers)), values)
    tool_message = {"role": "tool", "tool_call_id": inst.call["id"], "content": json.dumps(result, ensure_ascii=False)}
    return [tool_message, {"role": "assistant", "content": answer}]


# ---- kinds ----------------------------------------------------------------------------------------


def _single(world: _World, cat: Catalogue) -> Json:
    inst = _instance(world, cat, world.rng.choice(cat.intents))
    messages = [*_opening(world, cat), {"role": "user", "content": inst.text}, _calls_message([inst.call])]
    return _body("single", messages, _toolset(world, cat, [inst.intent.tool]), cat, [inst.template])


def _parallel(world: _World, cat: Catalogue) -> Json:
    rng = world.rng
    insts = [_instance(world, cat, rng.choice(cat.intents)) for _ in range(rng.randint(2, world.config.max_parallel))]
    text = insts[0].text
    for inst in insts[1:]:
        text = _join(rng, world.common, text, inst.text)
    messages = [*_opening(world, cat), {"role": "user", "content": text}, _calls_message([i.call for i in insts])]
    tools = _toolset(world, cat, [i.intent.tool for i in insts])
    return _body("parallel", messages, tools, cat, [i.template for i in insts])


def _join(rng: random.Random, common: Common, a: str, b: str) -> str:
    connector = rng.choice(common.connectors or ("{a} and {b}",))
    b = b[:1].lower() + b[1:] if b[:1].isupper() and not b[1:2].isupper() else b
    return connector.replace("{a}", a.rstrip("?.! ")).replace("{b}", b)


def _multi_turn(world: _World, cat: Catalogue) -> Json | None:
    rng = world.rng
    messages = _opening(world, cat)
    templates: list[str] = []
    relevant: list[str] = []
    rounds = 2 if rng.random() < world.config.second_round else 1
    for r in range(rounds):
        intent = rng.choice(cat.intents)
        if r == 0 and intent.clarify and rng.random() < world.config.clarify_first:
            inst, asked = _clarified(world, cat, intent)
            messages += asked
        else:
            inst = _instance(world, cat, intent)
            messages.append({"role": "user", "content": inst.text})
        messages += [_calls_message([inst.call]), *_result_round(world, cat, inst)]
        templates.append(inst.template)
        relevant.append(intent.tool)
    return _body("multi_turn", messages, _toolset(world, cat, relevant), cat, templates)


def _clarified(world: _World, cat: Catalogue, intent: Intent) -> tuple[_Call, list[Json]]:
    """An underspecified request, the question, the user's value, then the full call."""
    rng = world.rng
    vague = rng.choice(intent.clarify)
    missing = sorted(required_slots(intent, cat.tools[intent.tool]) - vague.slots)
    full = _instance(world, cat, intent, Phrasing(vague.id, vague.text + " " + " ".join(f"{{{m}}}" for m in missing)))
    partial = {k: d.surface for k, d in full.bound.items()}
    asked_text = fill(vary(vague.text, rng, world.common, world.config.variants), partial)
    given = join_words([full.bound[m].surface for m in missing])
    provide = world.common.provide or ("{value}",)
    if len(given.split()) > 3:  # a clause ("the box was crushed") does not follow "it's"
        provide = tuple(t for t in provide if not t.lower().startswith(("it's", "it is"))) or ("{value}",)
    reply = rng.choice(provide).replace("{value}", given)
    question = _question(world, cat, missing)
    messages = [
        {"role": "user", "content": asked_text},
        {"role": "assistant", "content": question},
        {"role": "user", "content": reply},
    ]
    return full, messages


def _question(world: _World, cat: Catalogue, missing: Sequence[str]) -> str:
    asks = [q for m in missing for q in cat.slots[m].ask] if len(missing) == 1 else []
    if asks:
        return world.rng.choice(asks)
    default = world.rng.choice(world.common.default_ask or ("Could you tell me the {label}?",))
    return default.replace("{label}", join_words([label(m) for m in missing]))


def _clarify(world: _World, cat: Catalogue) -> Json | None:
    intents = [i for i in cat.intents if i.clarify]
    if not intents:
        return None
    intent = world.rng.choice(intents)
    full, asked = _clarified(world, cat, intent)
    messages = [*_opening(world, cat), *asked[:2]]
    return _body("clarify", messages, _toolset(world, cat, [intent.tool]), cat, [full.template])


def _error_recovery(world: _World, cat: Catalogue) -> Json | None:
    inst = _instance(world, cat, world.rng.choice(cat.intents))
    wrong = _wrong_call(world, cat, inst)
    if wrong is None:
        return None
    wrong_call, error = wrong
    note = world.rng.choice(world.common.error_fix) if world.common.error_fix and world.rng.random() < 0.3 else None
    messages = [
        *_opening(world, cat),
        {"role": "user", "content": inst.text},
        {**_calls_message([wrong_call]), "train": False},
        {"role": "tool", "tool_call_id": wrong_call["id"], "content": json.dumps({"error": error})},
        _calls_message([inst.call], note),
    ]
    return _body("error_recovery", messages, _toolset(world, cat, [inst.intent.tool]), cat, [inst.template])


def _wrong_call(world: _World, cat: Catalogue, inst: _Call) -> tuple[Json, str] | None:
    """A plausible mistake the tool rejects, and its error (training.data.mistakes)."""
    options = rejected_calls(inst.call["function"]["arguments"], cat.tools[inst.intent.tool].parameters, world.rng)
    if not options:
        return None
    bad_args, error = world.rng.choice(options)
    call = {
        "id": _call_id(world.rng),
        "type": "function",
        "function": {"name": inst.intent.tool, "arguments": bad_args},
    }
    return call, error


def _no_tool_irrelevant(world: _World, cat: Catalogue) -> Json | None:
    rng = world.rng
    others = [c for c in world.catalogues if c.name != cat.name]
    entries = [n for n in (*cat.no_tool, *world.common.no_tool) if n.kind == "no_tool_irrelevant" and n.phrasings]
    if others and (not entries or rng.random() < 0.6):
        other = rng.choice(others)
        inst = _instance(world, other, rng.choice(other.intents))
        text, template = inst.text, inst.template
        answer = rng.choice(world.common.refusals or ("Sorry, I can only help with {capabilities}.",))
        answer = answer.replace("{capabilities}", cat.about)
    elif entries:
        text, answer, template = _canned(world, rng.choice(entries), cat)
    else:
        return None
    tools = _toolset(world, cat, [], at_least=1)
    messages = [*_opening(world, cat), {"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return _body("no_tool_irrelevant", messages, tools, cat, [template])


def _canned(world: _World, entry: NoTool, cat: Catalogue) -> tuple[str, str, str]:
    phrasing = world.rng.choice(entry.phrasings)
    text = vary(phrasing.text, world.rng, world.common, world.config.variants)
    answer = world.rng.choice(entry.answers or world.common.refusals).replace("{capabilities}", cat.about)
    return text, answer, phrasing.id


def _no_tool_chitchat(world: _World, cat: Catalogue) -> Json | None:
    entries = [n for n in (*cat.no_tool, *world.common.no_tool) if n.kind == "no_tool_chitchat" and n.phrasings]
    if not entries:
        return None
    text, answer, template = _canned(world, world.rng.choice(entries), cat)
    no_tools = world.rng.random() < world.config.toolless_chitchat
    tools = [] if no_tools else _toolset(world, cat, [], at_least=1)
    messages = [*_opening(world, cat), {"role": "user", "content": text}, {"role": "assistant", "content": answer}]
    return _body("no_tool_chitchat", messages, tools, cat, [template])


_BUILDERS.update(
    single=_single,
    parallel=_parallel,
    multi_turn=_multi_turn,
    error_recovery=_error_recovery,
    no_tool_irrelevant=_no_tool_irrelevant,
    no_tool_chitchat=_no_tool_chitchat,
    clarify=_clarify,
)
