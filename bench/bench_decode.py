"""Decode speed, constrained vs unconstrained: the same engine, prompts and seeds, run
interleaved in one process so machine noise hits both alike. Two random-weight models: the
tiny test model (0.4M parameters, where any per-token overhead shows) and a small one
(~30M), closer to what the mask costs next to a real forward pass.

    python bench/bench_decode.py [--rounds 5] [--tokens 200] [--write]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import median, write_section  # noqa: E402
from server.constraints import ConstraintSpec, compile_constraint  # noqa: E402
from server.engines.base import Cancel, Finish, GenerateRequest  # noqa: E402
from server.engines.llamacpp import LlamaCppEngine  # noqa: E402
from server.templates import render  # noqa: E402
from server.toolcalls import get_format  # noqa: E402
from server.types import ChoiceMode, Message, Sampling, TextFormat, Tool, ToolChoice  # noqa: E402
from training.demo.tiny import TinySpec, build_tiny  # noqa: E402

TOOL = Tool(
    "search_orders",
    "Find orders.",
    {
        "type": "object",
        "properties": {
            "query": {"type": "string"},
            "limit": {"type": "integer"},
            "status": {"type": "string", "enum": ["open", "shipped", "returned"]},
        },
        "required": ["query"],
    },
)
MODELS = {
    "tiny (0.4M)": TinySpec(),
    "small (~30M)": TinySpec(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1536),
}
MODES = {"unconstrained": None, "auto (text)": ChoiceMode.NONE, "required (call)": ChoiceMode.REQUIRED}


async def tokens_per_second(engine: LlamaCppEngine, prompt: str, grammar: str | None, tokens: int, seed: int) -> float:
    sampling = Sampling(max_tokens=tokens, temperature=1.0, seed=seed)
    start = time.perf_counter()
    produced = 0
    async for event in engine.generate(GenerateRequest(prompt, sampling, grammar), Cancel()):
        if isinstance(event, Finish):
            produced = event.completion_tokens
    return produced / (time.perf_counter() - start)


async def measure(engine: LlamaCppEngine, rounds: int, tokens: int) -> dict[str, float]:
    info = engine.info()
    prompt = render(info.chat_template or "", [Message("user", "Find my open orders for shoes")], [TOOL])
    grammars = {name: _grammar(mode, info.special_tokens) for name, mode in MODES.items()}
    speeds: dict[str, list[float]] = {name: [] for name in MODES}
    for r in range(rounds):
        for name, grammar in grammars.items():  # interleaved: noise lands on every mode
            speeds[name].append(await tokens_per_second(engine, prompt, grammar, tokens, seed=r))
    return {name: median(v) for name, v in speeds.items()}


def _grammar(mode: ChoiceMode | None, special: frozenset[str]) -> str | None:
    if mode is None:
        return None
    spec = ConstraintSpec((TOOL,), ToolChoice(mode), True, TextFormat(), special)
    return compile_constraint(spec, get_format("hermes")).lark


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    rows = ["| model | mode | tokens/s (median) | vs unconstrained |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, spec in MODELS.items():
            model = build_tiny(Path(tmp) / label.split()[0], spec)
            engine = LlamaCppEngine(model.gguf, context_length=2048)
            result = asyncio.run(measure(engine, args.rounds, args.tokens))
            asyncio.run(engine.close())
            base = result["unconstrained"]
            for mode, tps in result.items():
                rows.append(f"| {label} | {mode} | {tps:,.0f} | {tps / base:.1%} |")
    table = "\n".join(rows)
    print(table)
    if args.write:
        note = (
            f"{args.rounds} interleaved rounds of {args.tokens} tokens per mode, temperature 1, same seeds; "
            "the grammar's next mask is computed while llama.cpp evaluates the current token. "
            "`auto (text)` is free text under the grammar that bans the call opener; `required (call)` "
            "is a Hermes call whose arguments are constrained by the tool's JSON Schema (it may finish "
            "early, so tokens/s is over what was generated)."
        )
        write_section(
            "Decode speed: constrained vs unconstrained",
            note + "\n\n" + table,
            ("llama_cpp_python", "llguidance", "numpy"),
        )


if __name__ == "__main__":
    main()
