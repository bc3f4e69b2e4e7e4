"""Coverage and soundness of the constraint compiler on the official JSON Schema test suite
(draft 2020-12): each group's schema is compiled as a json_schema response format; for every
schema accepted, each instance serialized in the pinned layout (json.dumps separators) must be
accepted when valid and rejected when invalid. GBNF is checked too, through llguidance's own
GBNF-to-Lark converter. Prints a Markdown table; exits 1 on any unsound case.

    python bench/bench_schema_suite.py [--suite DIR] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import write_section
from server.constraints import ConstraintSpec, compile_constraint, to_gbnf
from server.errors import GatewayError, UnsupportedFeature
from server.toolcalls import get_format
from server.types import TextFormat, ToolChoice

# shared/ lies beside the repository (as in CI: a fresh clone with shared/ next to it).
SUITE = Path(__file__).resolve().parents[2] / "shared" / "data" / "json-schema-test-suite" / "draft2020-12"
TITLE = "JSON Schema test suite: coverage and soundness"
HERMES = get_format("hermes")


class _ByteTokens:
    """One token per byte (llguidance's TokenizerWrapper protocol); EOS is an extra token."""

    def __init__(self) -> None:
        self.tokens = [bytes([i]) for i in range(256)] + [b"\xff<|eos|>"]
        self.special_token_ids = [256]
        self.eos_token_id = 256
        self.bos_token_id = None

    def __call__(self, text: bytes) -> list[int]:
        return list(text)


TOKENIZER = llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokens()))


@dataclass
class Row:
    schemas: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    unsound: list[str] = field(default_factory=list)


def accepts(grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(TOKENIZER, grammar, log_level=0)
    if matcher.is_error():  # a broken grammar would reject everything and hide unsoundness
        raise RuntimeError(matcher.get_error())
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


def layouts(data: Any) -> set[str]:
    """The pinned layout, with non-ASCII written raw and as \\u escapes (both are allowed)."""
    return {json.dumps(data), json.dumps(data, ensure_ascii=False)}


def grammars(schema: Any) -> tuple[str | None, str | None, str]:
    """(lark, gbnf-as-lark, outcome) for one schema; outcome is compiled / unsupported / invalid."""
    spec = ConstraintSpec((), ToolChoice(), True, TextFormat("json_schema", schema), frozenset())
    try:
        lark = compile_constraint(spec, HERMES).lark
    except GatewayError as error:
        return None, None, "unsupported" if isinstance(error, UnsupportedFeature) else "invalid"
    try:
        gbnf: str | None = gbnf_to_lark(to_gbnf(spec, HERMES))
    except GatewayError:
        gbnf = None
    return lark, gbnf, "compiled"


def score(row: Row, engine: str, grammar: str | None, test: dict[str, Any], where: str) -> None:
    if grammar is None:
        return
    texts = layouts(test["data"])
    if test["valid"]:
        row.counts[f"{engine} valid ok" if any(accepts(grammar, t) for t in texts) else f"{engine} valid refused"] += 1
    elif any(accepts(grammar, t) for t in texts):
        row.counts[f"{engine} unsound"] += 1
        row.unsound.append(f"{engine}: {where}: {test['description']}")
    else:
        row.counts[f"{engine} invalid ok"] += 1


def run_file(path: Path) -> Row:
    row = Row()
    for group in json.loads(path.read_text()):
        row.schemas += 1
        lark, gbnf, outcome = grammars(group["schema"])
        row.counts[outcome] += 1
        row.counts["gbnf"] += gbnf is not None
        for test in group["tests"]:
            score(row, "lark", lark, test, f"{path.stem} / {group['description']}")
            score(row, "gbnf", gbnf, test, f"{path.stem} / {group['description']}")
    return row


COLUMNS = ["schemas", "compiled", "unsupported", "invalid", "lark valid ok", "lark valid refused",
           "lark invalid ok", "lark unsound", "gbnf", "gbnf valid ok", "gbnf valid refused",
           "gbnf invalid ok", "gbnf unsound"]  # fmt: skip


def table(rows: dict[str, Row]) -> str:
    lines = ["| file | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    total = Row()
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(_cells(row)) + " |")
        total.schemas += row.schemas
        total.counts.update(row.counts)
    lines.append("| **total** | " + " | ".join(f"**{c}**" for c in _cells(total)) + " |")
    return "\n".join(lines)


def _cells(row: Row) -> list[str]:
    return [str(row.schemas)] + [str(row.counts[c]) for c in COLUMNS[1:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--suite", type=Path, default=SUITE)
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    args = parser.parse_args()
    rows = {p.stem: run_file(p) for p in sorted(args.suite.glob("*.json"))}
    unsound = [u for row in rows.values() for u in row.unsound]
    body = "\n".join([LEGEND, "", table(rows), "", f"Unsound cases: {len(unsound)}."])
    body += "".join(f"\n- {case}" for case in unsound)
    print(body)
    if args.write:
        write_section(TITLE, body, ("llguidance", "jsonschema"))
    return 1 if unsound else 0


LEGEND = (
    "Official JSON-Schema-Test-Suite, draft 2020-12 (commit 44401e0c). Each group's schema is "
    "compiled as a `json_schema` response format. compiled / unsupported (400, keyword named) / "
    "invalid (400: not a schema object, or no value satisfies it). For compiled schemas each "
    "instance, serialized as json.dumps writes it (ASCII-escaped or raw UTF-8), must be accepted "
    "when valid (`valid ok`; `valid refused` = stricter than the spec, e.g. fixed property order, "
    "`format` enforced, 1.0 refused as an integer) and refused when invalid (`invalid ok`); "
    "`unsound` counts invalid instances accepted. The GBNF columns check to_gbnf's output through "
    "llguidance's gbnf_to_lark converter (`gbnf` = schemas GBNF could express)."
)


if __name__ == "__main__":
    sys.exit(main())
