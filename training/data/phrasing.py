"""Slot values and surface text: draw a slot (its words for the user, its value for the call),
run `$generators`, fill templates, and vary the wording (polite, terse, lowercase, typos, extra
context) without ever touching the slot text the model must copy. Pure functions of a seeded
`random.Random`; knows nothing of records.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Any

from training.data.catalogue import Common, Slot, holes

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
_HOLE_SPLIT = re.compile(r"(\{[a-zA-Z_][a-zA-Z0-9_.]*\})")


@dataclass(frozen=True)
class Drawn:
    surface: str  # what the user writes
    value: Any  # what goes into the call


def draw(slot: Slot, slots: dict[str, Slot], rng: random.Random) -> Drawn:
    if slot.gen is not None:
        return generate(slot.gen, slots, rng)
    if not slot.values:
        raise ValueError(f"slot {slot.name!r} has no values in this split; add values to the catalogue")
    chosen = rng.choice(slot.values)
    return Drawn(rng.choice(chosen.say), chosen.value)


def generate(spec: str, slots: dict[str, Slot], rng: random.Random) -> Drawn:
    """`$digits:6-8`, `$int:1..9`, `$float:1..50:2`, `$date`, `$time`, `$list:<slot>:1-3`."""
    name, _, arg = spec.removeprefix("$").partition(":")
    if name == "digits":
        shortest, _, longest = arg.partition("-")
        n = rng.randint(int(shortest), int(longest or shortest))
        text = str(rng.randint(1, 9)) + "".join(str(rng.randint(0, 9)) for _ in range(n - 1))
        return Drawn(text, text)
    if name == "int":
        low, high = (int(x) for x in arg.split(".."))
        value = rng.randint(low, high)
        return Drawn(str(value), value)
    if name == "float":
        bounds, _, places = arg.partition(":")
        low_f, high_f = (float(x) for x in bounds.split(".."))
        value_f = round(rng.uniform(low_f, high_f), int(places or 2))
        return Drawn(f"{value_f:.{int(places or 2)}f}", value_f)
    if name == "date":
        return _date(rng)
    if name == "time":
        return _time(rng)
    if name == "list":
        return _list(arg, slots, rng)
    raise ValueError(f"unknown generator {spec!r}; known: $digits, $int, $float, $date, $time, $list")


def _date(rng: random.Random) -> Drawn:
    year, month, day = rng.choice((2025, 2026, 2027)), rng.randint(1, 12), rng.randint(1, 28)
    iso = f"{year}-{month:02d}-{day:02d}"
    name = MONTHS[month - 1]
    surface = rng.choice((iso, f"{name} {day}, {year}", f"{day} {name} {year}", f"{name[:3]} {day} {year}"))
    return Drawn(surface, iso)


def _time(rng: random.Random) -> Drawn:
    hour, minute = rng.randint(0, 23), rng.choice((0, 0, 15, 30, 45))
    value = f"{hour:02d}:{minute:02d}"
    twelve = f"{hour % 12 or 12}{'' if minute == 0 else f':{minute:02d}'} {'am' if hour < 12 else 'pm'}"
    return Drawn(rng.choice((value, twelve)), value)


def _list(arg: str, slots: dict[str, Slot], rng: random.Random) -> Drawn:
    pool_name, _, counts = arg.partition(":")
    low, _, high = counts.partition("-")
    pool = slots[pool_name].values
    k = min(len(pool), rng.randint(int(low or 1), int(high or low or 1)))
    chosen = rng.sample(pool, k)
    says = [rng.choice(v.say) for v in chosen]
    return Drawn(join_words(says), [v.value for v in chosen])


def join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def evaluate(expr: Any, bound: dict[str, Drawn]) -> Any:
    """An argument expression: "{x}" alone keeps x's typed value; holes inside text become text."""
    if isinstance(expr, str):
        found = holes(expr)
        if len(found) == 1 and expr == "{" + found[0] + "}":
            return bound[found[0]].value
        return fill(expr, {h: as_text(bound[h].value) for h in found})
    if isinstance(expr, list):
        return [evaluate(e, bound) for e in expr]
    return expr


def result_value(expr: Any, bound: dict[str, Drawn], slots: dict[str, Slot], rng: random.Random) -> Any:
    """A tool-result field: a `$generator`, a pool to pick from, an expression, or a literal."""
    if isinstance(expr, str) and expr.startswith("$"):
        return generate(expr, slots, rng).value
    if isinstance(expr, list):
        return rng.choice(expr)
    return evaluate(expr, bound)


def as_text(value: Any) -> str:
    if isinstance(value, list):
        return join_words([as_text(v) for v in value]) if value else ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def fill(template: str, values: dict[str, str]) -> str:
    return _HOLE_SPLIT.sub(lambda m: values.get(m.group(1)[1:-1], m.group(1)), template)


# ---- surface variants -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variants:
    """Probabilities of each surface change to a user request (independent draws)."""

    polite: float = 0.2
    terse: float = 0.15
    lowercase: float = 0.2
    typo: float = 0.15
    context: float = 0.2


def vary(template: str, rng: random.Random, common: Common, p: Variants) -> str:
    """The template with its literal text varied; {holes} are left for `fill`."""
    parts = _HOLE_SPLIT.split(template)
    literal = [i for i, part in enumerate(parts) if not _HOLE_SPLIT.fullmatch(part)]
    if rng.random() < p.typo:
        candidates = [i for i in literal if re.search(r"[a-z]{4,}", parts[i])]
        if candidates:
            i = rng.choice(candidates)
            parts[i] = _typo(parts[i], rng)
    if rng.random() < p.lowercase:
        for i in literal:
            parts[i] = parts[i].lower()
    text = "".join(parts)
    if rng.random() < p.terse:
        text = text.rstrip("?.! ")
    if rng.random() < p.polite and common.polite_prefix and common.polite_suffix:
        text = _polite(text, rng, common)
    if rng.random() < p.context and common.context_before and common.context_after:
        text = _context(text, rng, common)
    return text


def _typo(text: str, rng: random.Random) -> str:
    words = list(re.finditer(r"[a-z]{4,}", text))
    word = rng.choice(words)
    w, j = word.group(), rng.randint(1, len(word.group()) - 2)
    changed = rng.choice((w[:j] + w[j + 1] + w[j] + w[j + 2 :], w[:j] + w[j + 1 :], w[:j] + w[j] + w[j:]))
    return text[: word.start()] + changed + text[word.end() :]


def _polite(text: str, rng: random.Random, common: Common) -> str:
    if rng.random() < 0.5:
        prefix = rng.choice(common.polite_prefix)
        return prefix + (text[:1].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text)
    text = text.rstrip()
    # A new sentence ("Thanks!") after a full stop, a tail (", please.") otherwise: never "?, please."
    text = text + "." if text.endswith("please") else text
    ended = text.endswith(("?", ".", "!"))
    fitting = [s for s in common.polite_suffix if (s.startswith(" ") and s[1:2].isupper()) == ended]
    return text + rng.choice(fitting or common.polite_suffix)


def _context(text: str, rng: random.Random, common: Common) -> str:
    if rng.random() < 0.5:
        return rng.choice(common.context_before) + " " + text
    end = "" if text.endswith(("?", ".", "!")) else "."
    return text + end + " " + rng.choice(common.context_after)
