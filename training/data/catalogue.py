"""Tool catalogues: YAML files of tools, slot values and phrasings, loaded into frozen dataclasses.

A catalogue holds `tools` (OpenAI function schemas plus a `result` recipe for multi-turn),
`slots` (value pools, `{value, say}` pools that map words to values, or `$generators`),
`intents` (a tool, argument expressions over slots, many phrasings, answer templates,
underspecified phrasings) and `no_tool` requests. `common.yaml` beside the catalogues holds
the surface pieces every domain shares. Loading checks that every phrasing names every slot of
every required argument, so the generator never emits a call the request does not justify.
This module knows nothing of records or sampling.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from server.toolcalls.validation import check_schema

CATALOGUES = Path(__file__).resolve().parents[1] / "catalogues"
COMMON = CATALOGUES / "common.yaml"
GENERAL = CATALOGUES / "general"
SUPPORT = CATALOGUES / "support.yaml"
PARTS = ("train", "val", "test")


class CatalogueError(ValueError):
    """A catalogue file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True)
class Phrasing:
    id: str  # "<catalogue>/<intent>/<n>": the unit held out of training
    text: str

    @property
    def slots(self) -> frozenset[str]:
        return frozenset(holes(self.text))


@dataclass(frozen=True)
class SlotValue:
    value: Any
    say: tuple[str, ...]  # surface forms; the argument gets `value`


@dataclass(frozen=True)
class Slot:
    name: str
    values: tuple[SlotValue, ...] = ()
    gen: str | None = None  # "$digits:6-8", "$int:1..9", "$date", "$time", "$list:<slot>:1-3"
    ask: tuple[str, ...] = ()  # clarifying questions when the user left it out


@dataclass(frozen=True)
class ToolDef:
    name: str
    description: str
    parameters: dict[str, Any]
    result: dict[str, Any]  # field -> value expression (what the tool returns)


@dataclass(frozen=True)
class Intent:
    id: str
    tool: str
    args: dict[str, Any]  # argument -> expression over slots ("{city}", literal, ["{a}", "{b}"])
    phrasings: tuple[Phrasing, ...]
    answers: tuple[str, ...]  # final answers after the tool result: {slot}, {result.field}
    clarify: tuple[Phrasing, ...] = ()  # requests missing a required slot


@dataclass(frozen=True)
class NoTool:
    kind: str  # "no_tool_chitchat" | "no_tool_irrelevant"
    phrasings: tuple[Phrasing, ...]
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Catalogue:
    name: str
    tools: dict[str, ToolDef]
    slots: dict[str, Slot]
    intents: tuple[Intent, ...]
    no_tool: tuple[NoTool, ...] = ()
    system: tuple[str, ...] = ()
    about: str = ""  # what its tools can do, for refusals: "weather forecasts and conditions"


@dataclass(frozen=True)
class Common:
    """Surface pieces shared by all domains (common.yaml)."""

    polite_prefix: tuple[str, ...]
    polite_suffix: tuple[str, ...]
    context_before: tuple[str, ...]
    context_after: tuple[str, ...]
    connectors: tuple[str, ...]  # "{a} and {b}" ways to ask for two things at once
    refusals: tuple[str, ...]  # answers to requests no tool fits; {capabilities}
    no_tool: tuple[NoTool, ...]  # chit-chat and out-of-scope requests
    default_ask: tuple[str, ...]  # "{label}" questions for slots without `ask`
    error_fix: tuple[str, ...]  # short notes before a corrected call (may be empty)
    provide: tuple[str, ...]  # a user supplying a value asked for: "it's {value}"


_HOLE = re.compile(r"\{([a-zA-Z_][a-zA-Z0-9_.]*)\}")


def holes(text: str) -> list[str]:
    return _HOLE.findall(text)


def _strs(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise CatalogueError(f"{where}: expected a list of strings")
    return tuple(raw)


def _phrasings(raw: Any, prefix: str) -> tuple[Phrasing, ...]:
    return tuple(Phrasing(f"{prefix}/{i}", text) for i, text in enumerate(_strs(raw, prefix)))


def _slot(name: str, raw: Any, where: str) -> Slot:
    if isinstance(raw, str):
        raw = {"gen": raw}
    elif isinstance(raw, list):
        raw = {"values": raw}
    if not isinstance(raw, dict) or ("values" in raw) == ("gen" in raw):
        raise CatalogueError(f"{where}: slot {name!r} needs a list of values or one `gen` (e.g. $digits:6)")
    values = tuple(_slot_value(v, f"{where}: slot {name!r}") for v in raw.get("values") or ())
    gen = raw.get("gen")
    if gen is not None and not (isinstance(gen, str) and gen.startswith("$")):
        raise CatalogueError(f"{where}: slot {name!r} generator must look like $digits:6, got {gen!r}")
    return Slot(name, values, gen, _strs(raw.get("ask"), f"{where}: slot {name!r} ask"))


def _slot_value(raw: Any, where: str) -> SlotValue:
    if isinstance(raw, dict):
        say = _strs(raw.get("say"), where) or (str(raw["value"]),)
        return SlotValue(raw["value"], say)
    return SlotValue(raw, (str(raw),))


def _tool(raw: dict[str, Any], where: str) -> ToolDef:
    params = raw.get("parameters") or {"type": "object", "properties": {}}
    problem = check_schema(params)
    if problem:
        raise CatalogueError(f"{where}: tool {raw.get('name')!r} has an invalid schema {problem}")
    for key, prop in (params.get("properties") or {}).items():
        # YAML reads a bare off/on/yes/no as a boolean: an enum value no call could ever send
        own = jsonschema.Draft202012Validator({k: sub for k, sub in prop.items() if k != "enum"})
        wrong = [v for v in prop.get("enum", ()) if not own.is_valid(v)]
        if wrong:
            raise CatalogueError(
                f"{where}: tool {raw.get('name')!r}: enum values {wrong} of {key!r} do not fit its "
                f"own schema (quote them in YAML)"
            )
    return ToolDef(raw["name"], raw.get("description", ""), params, dict(raw.get("result") or {}))


def _intent(raw: dict[str, Any], cat: str, tools: dict[str, ToolDef], slots: dict[str, Slot]) -> Intent:
    where = f"{cat}: intent {raw.get('id')!r}"
    tool = tools.get(raw.get("tool", ""))
    if tool is None:
        raise CatalogueError(f"{where}: unknown tool {raw.get('tool')!r}; declared: {sorted(tools)}")
    intent = Intent(
        id=raw["id"],
        tool=tool.name,
        args=dict(raw.get("args") or {}),
        phrasings=_phrasings(raw.get("phrasings"), f"{cat}/{raw['id']}"),
        answers=_strs(raw.get("answers"), f"{where} answers"),
        clarify=_phrasings(raw.get("clarify"), f"{cat}/{raw['id']}/clarify"),
    )
    _check_intent(intent, tool, slots, where)
    return intent


def _check_intent(intent: Intent, tool: ToolDef, slots: dict[str, Slot], where: str) -> None:
    props = tool.parameters.get("properties", {})
    unknown = set(intent.args) - set(props)
    if unknown:
        raise CatalogueError(f"{where}: arguments {sorted(unknown)} are not parameters of {tool.name}")
    used = {h for expr in intent.args.values() for h in arg_holes(expr)}
    missing_slots = used - set(slots)
    if missing_slots:
        raise CatalogueError(f"{where}: slots {sorted(missing_slots)} are not declared")
    if not intent.phrasings or not intent.answers:
        raise CatalogueError(f"{where}: needs phrasings and answers")
    required = required_slots(intent, tool)
    for p in intent.phrasings:
        if not required <= p.slots:
            raise CatalogueError(f"{where}: phrasing {p.text!r} leaves out {sorted(required - p.slots)}")
        if not p.slots <= set(slots):
            raise CatalogueError(f"{where}: phrasing {p.text!r} names undeclared slots")
    for p in intent.clarify:
        if required <= p.slots:
            raise CatalogueError(f"{where}: clarify phrasing {p.text!r} misses no required slot")


def arg_holes(expr: Any) -> list[str]:
    if isinstance(expr, str):
        return holes(expr)
    if isinstance(expr, list):
        return [h for item in expr for h in arg_holes(item)]
    return []


def required_slots(intent: Intent, tool: ToolDef) -> set[str]:
    required = tool.parameters.get("required", [])
    return {h for name in required if name in intent.args for h in arg_holes(intent.args[name])}


def _no_tool(raw: Any, prefix: str) -> tuple[NoTool, ...]:
    out = []
    for i, entry in enumerate(raw or ()):
        kind = entry.get("kind", "no_tool_chitchat")
        if kind not in ("no_tool_chitchat", "no_tool_irrelevant"):
            raise CatalogueError(f"{prefix}: no_tool kind must be no_tool_chitchat or no_tool_irrelevant")
        phrasings = _phrasings(entry.get("phrasings"), f"{prefix}/no_tool{i}")
        out.append(NoTool(kind, phrasings, _strs(entry.get("answers"), f"{prefix} no_tool {i}")))
    return tuple(out)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogueError(f"{path}: {exc}") from None
    if not isinstance(raw, dict):
        raise CatalogueError(f"{path}: a catalogue is a YAML mapping")
    return raw


@cache
def load_catalogue(path: Path) -> Catalogue:
    raw = _read_yaml(path)
    name = raw.get("domain") or path.stem
    try:
        tools = {t["name"]: _tool(t, f"{path}") for t in raw.get("tools") or ()}
        slots = {k: _slot(k, v, str(path)) for k, v in (raw.get("slots") or {}).items()}
        intents = tuple(_intent(i, name, tools, slots) for i in raw.get("intents") or ())
    except (KeyError, TypeError, AttributeError) as exc:
        raise CatalogueError(f"{path}: malformed entry ({type(exc).__name__}: {exc})") from None
    no_tool = _no_tool(raw.get("no_tool"), name)
    return Catalogue(name, tools, slots, intents, no_tool, _strs(raw.get("system"), name), raw.get("about") or name)


@cache
def load_common(path: Path = COMMON) -> Common:
    raw = _read_yaml(path)
    keys = (
        "polite_prefix",
        "polite_suffix",
        "context_before",
        "context_after",
        "connectors",
        "refusals",
        "default_ask",
        "error_fix",
        "provide",
    )
    fields = {k: _strs(raw.get(k), f"{path} {k}") for k in keys}
    return Common(no_tool=_no_tool(raw.get("no_tool"), "common"), **fields)


def catalogue_paths(paths: list[Path]) -> list[Path]:
    """Files as given, folders expanded to their *.yaml (sorted); common.yaml never included."""
    out: list[Path] = []
    for path in paths:
        found = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
        out.extend(p for p in found if p.resolve() != COMMON.resolve())
    return out


# ---- held-out parts: which phrasings and values each split may use ------------------------------


def _rank(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def partition(keys: list[str], fractions: tuple[float, float], minimum: int) -> dict[str, str]:
    """key -> "train" | "val" | "test"; val and test get ceil(n * fraction) keys each (chosen by a
    stable hash) once there are `minimum` keys; below that every key is in every part ("all")."""
    if len(keys) < minimum:
        return dict.fromkeys(keys, "all")
    ordered = sorted(keys, key=_rank)
    n_val, n_test = (math.ceil(len(keys) * f) for f in fractions)
    parts = ["test"] * n_test + ["val"] * n_val
    return {k: parts[i] if i < len(parts) else "train" for i, k in enumerate(ordered)}


def _keep(items: tuple[Any, ...], key: Any, part: str, fractions: tuple[float, float], minimum: int) -> tuple[Any, ...]:
    assigned = partition([key(x) for x in items], fractions, minimum)
    return tuple(x for x in items if assigned[key(x)] in (part, "all"))


def part_view(
    cat: Catalogue,
    part: str,
    fractions: tuple[float, float] = (0.1, 0.15),
    held_out_tools: frozenset[str] = frozenset(),
) -> Catalogue:
    """The catalogue as one split sees it: its own phrasings (>= 5 per intent to split), pool
    values (>= 8) and surface words (>= 4 per value); held-out tools exist only in "test"."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    hidden = held_out_tools if part != "test" else frozenset()
    intents = tuple(
        replace(
            i,
            phrasings=_keep(i.phrasings, _pid, part, fractions, 5),
            clarify=_keep(i.clarify, _pid, part, fractions, 5),
        )
        for i in cat.intents
        if i.tool not in hidden
    )
    return replace(
        cat,
        tools={k: t for k, t in cat.tools.items() if k not in hidden},
        slots={k: _slot_part(s, part, fractions) for k, s in cat.slots.items()},
        intents=intents,
        no_tool=tuple(replace(n, phrasings=_keep(n.phrasings, _pid, part, fractions, 5)) for n in cat.no_tool),
    )


def common_view(common: Common, part: str, fractions: tuple[float, float] = (0.1, 0.15)) -> Common:
    return replace(
        common,
        no_tool=tuple(replace(n, phrasings=_keep(n.phrasings, _pid, part, fractions, 5)) for n in common.no_tool),
    )


def _pid(p: Phrasing) -> str:
    return p.id


def _slot_part(slot: Slot, part: str, fractions: tuple[float, float]) -> Slot:
    values = _keep(slot.values, lambda v: f"{slot.name}={v.value!r}", part, fractions, 8)
    values = tuple(
        replace(v, say=_keep(v.say, lambda s, v=v: f"{slot.name}={v.value!r}:{s}", part, fractions, 4)) for v in values
    )
    return replace(slot, values=values)


def label(name: str) -> str:
    """A slot name as words: "order_id" -> "order id"."""
    return name.replace("_", " ").strip(string.whitespace)
