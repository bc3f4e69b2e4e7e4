"""Realistic wrong calls, shared by the error-recovery traces (synth) and the DPO pairs (pairs):
the mistakes small models make and a tool would reject. Pure functions of a seeded rng.
"""

from __future__ import annotations

import random
from typing import Any

from training.data.catalogue import label

Args = dict[str, Any]


def off_by_digit(rng: random.Random, digits: str, drop: bool = True) -> str:
    """One digit changed (or, sometimes, dropped): the classic failure to copy an id."""
    i = rng.randrange(len(digits))
    if drop and rng.random() < 0.5 and len(digits) > 4:
        return digits[:i] + digits[i + 1 :]
    return digits[:i] + str((int(digits[i]) + rng.randint(1, 9)) % 10) + digits[i + 1 :]


def rejected_calls(args: Args, parameters: dict[str, Any], rng: random.Random) -> list[tuple[Args, str]]:
    """(wrong arguments, the tool's error) for each mistake that applies: an id with a digit off
    (not found), a number sent as text, a required argument left out."""
    props = parameters.get("properties", {})
    options: list[tuple[Args, str]] = []
    for name, value in args.items():
        if isinstance(value, str) and value.isdigit() and len(value) >= 4:
            bad = off_by_digit(rng, value)
            options.append(({**args, name: bad}, f"no {label(name).removesuffix(' id')} with {label(name)} {bad}"))
        if props.get(name, {}).get("type") == "integer" and isinstance(value, int):
            options.append(({**args, name: str(value)}, f"argument '{name}' must be an integer, got a string"))
    for name in parameters.get("required", []):
        if name in args:
            options.append(({k: v for k, v in args.items() if k != name}, f"missing required argument '{name}'"))
    return options
