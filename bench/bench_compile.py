"""Constraint compile time over every BFCL function set (all categories with functions), for
tool_choice auto and required: cold (every cache cleared before each compile) and cached (the
same spec again), plus GBNF emission. Prints a Markdown table; --write records it in
docs/benchmarks.md under "Constraint compile time".

    python bench/bench_compile.py [--write] [--limit N]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, pct, write_section
from server.constraints import ConstraintSpec, clear_cache, compile_constraint, to_gbnf
from server.errors import GatewayError
from server.toolcalls import ToolFormat, get_format
from server.types import ChoiceMode, TextFormat, Tool, ToolChoice
from training.evaluation import bfcl

TITLE = "Constraint compile time"
MARKERS = frozenset({"<tool_call>", "</tool_call>"})
PLAIN = TextFormat()


VARIANTS = [
    ("auto, cold", ChoiceMode.AUTO, "cold"),
    ("auto, cached", ChoiceMode.AUTO, "cached"),
    ("required, cold", ChoiceMode.REQUIRED, "cold"),
    ("required, cached", ChoiceMode.REQUIRED, "cached"),
    ("auto, GBNF emission (not cached)", ChoiceMode.AUTO, "gbnf"),
]


def timed(run: Callable[[], object]) -> float | None:
    """Milliseconds for one call; None when the request is refused (counted apart)."""
    start = time.perf_counter()
    try:
        run()
    except GatewayError:
        return None
    return (time.perf_counter() - start) * 1e3


def once(tools: list[Tool], mode: ChoiceMode, how: str, fmt: ToolFormat) -> float | None:
    spec = ConstraintSpec(tuple(tools), ToolChoice(mode), True, PLAIN, MARKERS)
    run = partial(to_gbnf if how == "gbnf" else compile_constraint, spec, fmt)
    if how == "cached":
        timed(run)  # compile once; the timed call is the hit
    else:
        clear_cache()
    return timed(run)


def row(label: str, times: list[float | None]) -> str:
    done = [t for t in times if t is not None]
    cells = [label, str(len(done)), str(len(times) - len(done))]
    cells += [f"{median(done):.3f}", f"{pct(done, 99):.3f}", f"{max(done):.3f}"]
    return "| " + " | ".join(cells) + " |"


def table(sets: list[list[Tool]]) -> str:
    fmt = get_format("hermes")
    times: dict[str, list[float | None]] = {label: [] for label, _, _ in VARIANTS}
    for tools in sets:  # variants interleaved: machine noise hits them alike
        for label, mode, how in VARIANTS:
            times[label].append(once(tools, mode, how, fmt))
    head = [
        "| mode, cache | compiled | refused | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + [row(label, times[label]) for label, _, _ in VARIANTS])


def describe(sets: list[list[Tool]]) -> str:
    sizes = Counter(len(s) for s in sets)
    spread = ", ".join(f"{n}: {c}" for n, c in sorted(sizes.items()))
    return (
        f"{len(sets)} BFCL v4 function sets (one per entry with function docs; tools per set: "
        f"{spread}), Hermes format, markers as special tokens. Cold clears every cache "
        "(grammars and memoized JSON Schema meta-checks) before each compile; cached compiles "
        "the same spec again. Refused: the request gets a 400 (a schema llguidance cannot "
        "enforce, or one no value satisfies). Times are wall-clock per request, one thread; "
        f"load average before the run: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    parser.add_argument("--limit", type=int, default=None, help="only the first N function sets")
    args = parser.parse_args()
    sets = bfcl.function_sets()[: args.limit]
    body = describe(sets) + "\n\n" + table(sets)
    print(body)
    if args.write:
        write_section(TITLE, body, ("llguidance", "jsonschema"))


if __name__ == "__main__":
    main()
