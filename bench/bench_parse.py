"""Tool-call parsing cost per output token, for every registered format: whole-text `parse` and
the stream parser fed one token's text at a time (as the gateway feeds it), on realistic
outputs (answers, one call, parallel calls, text then a call; arguments with unicode, quotes,
nested objects and long strings). Tokens are counted with the demo models' byte-level BPE
(training/demo/tokenizer.py), not estimated from characters. Prints a Markdown table; --write records
it in docs/benchmarks.md under "Tool-call parsing cost".

    python bench/bench_parse.py [--write] [--samples N] [--repeat R]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tokenizers import Tokenizer  # noqa: E402

from bench.common import pct, write_section  # noqa: E402
from server.toolcalls import ToolFormat, format_names, get_format  # noqa: E402
from server.types import ToolCall  # noqa: E402
from training.demo.tokenizer import train_tokenizer  # noqa: E402

TITLE = "Tool-call parsing cost"
JSON_FAMILY = ("hermes", "llama3_json", "mistral", "mistral_v11", "granite", "phi4_mini", "functionary_v3",
               "json_envelope")  # fmt: skip
WORDS = ("weather", "Paris", "São Paulo", "order", "ticket", "the", "quick", "report", "naïve", "café", "東京",
         "meeting", "\"quoted\"", "back\\slash", "tomorrow", "invoice", "42", "emoji 🎉", "line\nbreak")  # fmt: skip


@dataclass(frozen=True)
class Sample:
    text: str
    pieces: list[str]  # the text of each token, in order (what an engine streams)


def phrase(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def arguments(rng: random.Random) -> dict[str, Any]:
    """Arguments shaped like real tool calls: ids, enums, numbers, nested filters, a long body."""
    args: dict[str, Any] = {"query": phrase(rng, 2, 6), "limit": rng.randint(1, 50)}
    if rng.random() < 0.5:
        args["filters"] = {"open_now": rng.random() < 0.5, "price": [1, 2], "near": None, "radius_km": 2.5}
    if rng.random() < 0.3:
        args["body"] = phrase(rng, 30, 60)
    return args


def outputs(rng: random.Random, count: int) -> list[tuple[str | None, list[ToolCall]]]:
    """(content, calls): a quarter each of answers, one call, parallel calls, text then a call."""
    found: list[tuple[str | None, list[ToolCall]]] = []
    for i in range(count):
        calls = [ToolCall(f"tool_{rng.randint(0, 9)}", json.dumps(arguments(rng), ensure_ascii=False))
                 for _ in range((0, 1, rng.randint(2, 3), 1)[i % 4])]  # fmt: skip
        content = phrase(rng, 8, 40) if i % 4 in (0, 3) else None
        found.append((content, calls))
    return found


def samples(fmt: ToolFormat, tok: Tokenizer, count: int) -> list[Sample]:
    found = []
    for content, calls in outputs(random.Random(0), count):
        text = fmt.render(content, calls)
        offsets = tok.encode(text, add_special_tokens=False).offsets
        pieces = [text[a:b] for a, b in offsets]
        assert "".join(pieces) == text, "token offsets must tile the text"
        found.append(Sample(text, pieces))
    return found


def per_token_us(run: Any, sample: Sample, repeat: int) -> float:
    """Best of `repeat` runs, in microseconds per token."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run(sample)
        best = min(best, time.perf_counter() - start)
    return best * 1e6 / len(sample.pieces)


def parse_whole(fmt: ToolFormat) -> Any:
    return lambda sample: fmt.parse(sample.text)


def parse_stream(fmt: ToolFormat) -> Any:
    def run(sample: Sample) -> None:
        parser = fmt.stream_parser()
        for piece in sample.pieces:
            parser.feed(piece)
        parser.close()

    return run


def row(name: str, tok: Tokenizer, count: int, repeat: int) -> str:
    fmt = get_format(name)
    found = samples(fmt, tok, count)
    tokens = sum(len(s.pieces) for s in found)
    chars = sum(len(s.text) for s in found)
    whole = [per_token_us(parse_whole(fmt), s, repeat) for s in found]
    stream = [per_token_us(parse_stream(fmt), s, repeat) for s in found]
    target = "yes" if name not in JSON_FAMILY else ("yes" if statistics.mean(stream) < 5 else "**no**")
    return (f"| {name} | {len(found)} | {tokens} | {chars / tokens:.2f} | {statistics.mean(whole):.2f} | "
            f"{statistics.mean(stream):.2f} | {pct(stream, 90):.2f} | {target} |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="record the table in docs/benchmarks.md")
    parser.add_argument("--samples", type=int, default=200, help="outputs per format")
    parser.add_argument("--repeat", type=int, default=5, help="runs per output; the best is kept")
    args = parser.parse_args()
    tok = train_tokenizer()
    head = ("| format | outputs | tokens | chars/token | parse us/token (mean) | stream us/token (mean) | "
            "stream us/token (p90) | under 5 us (JSON family) |\n|---|---|---|---|---|---|---|---|")  # fmt: skip
    table = "\n".join([head, *(row(name, tok, args.samples, args.repeat) for name in format_names())])
    body = (f"{table}\n\nTokens: the demo models' byte-level BPE (vocabulary 2048); each output is fed to "
            "the stream parser one token's text at a time, then closed. Best of "
            f"{args.repeat} runs per output; the mean and p90 are over outputs.")  # fmt: skip
    print(body)
    if args.write:
        write_section(TITLE, body, ("tokenizers",))


if __name__ == "__main__":
    main()
