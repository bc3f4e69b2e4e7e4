"""BFCL on real models, three arms side by side on the same model file and prompts:

- `raw`: the model unconstrained (llama.cpp's llama-server `/completion`, the gateway's own
  prompt, greedy), its calls read strictly in the template's format (`<tool_call>` tags for Qwen);
- `llama-server`: llama-server `--jinja` `/v1/chat/completions` with the tools, its own parser;
- `callgate`: the gateway, `tool_choice` auto.

Scored with BFCL's AST matching (training/evaluation/bfcl_ast.py, checked against bfcl_eval's checker), per
category: AST accuracy, valid-call rate (entries answered with calls that all name a declared tool
with schema-valid arguments, over the entries that need a call), calls lost as text (answers with no
`tool_calls` whose text holds a call-shaped block naming a declared tool), false calls on
irrelevance. Answers are saved under .cache/bench-bfcl/, so a long run resumes where it stopped.

    python bench/bench_bfcl.py --models smollm2-135m-instruct qwen2.5-coder-0.5b-instruct --per-category 40 --write
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import jsonschema  # noqa: E402

from bench.common import exit_on_sigterm, write_section  # noqa: E402
from server.serving import catalogue, fetch  # noqa: E402
from server.toolcalls import get_format  # noqa: E402
from server.toolcalls.detect import detect_format  # noqa: E402
from server.toolcalls.prompting import render_chat  # noqa: E402
from server.types import Message, Tool  # noqa: E402
from training.evaluation import bfcl, bfcl_ast  # noqa: E402

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple"]
ARMS = ["raw", "llama-server", "callgate"]
OUT = Path(__file__).resolve().parent.parent / ".cache" / "bench-bfcl"
MAX_TOKENS = 256
Answer = dict[str, Any]  # {"id", "calls": [[name, arguments text]], "content", "finish"}


READING = """\
The first N entries of each category (the table's "entries": those every arm has answered; the
bench resumes towards `--per-category`), greedy, 256 tokens, one llama.cpp thread per server, the
same GGUF file and, for `raw` and callgate, the same prompt (the gateway's, tools included).
callgate runs with the catalogue's calibrated no-tool threshold (Qwen 0.5B: 0.7; SmolLM2: 0.2,
read after `{"`), calibrated on entries 40-59 (bench/calibrate_threshold.py), not on these.

- AST accuracy: BFCL's AST matching (training/evaluation/bfcl_ast.py) of the returned `tool_calls`
  against the category's possible answers; on irrelevance, the share answered without a call.
- valid-call rate: entries answered with calls that all name a declared tool with schema-valid
  arguments, over the entries that need a call.
- calls lost as text: answers with no `tool_calls` whose text holds a call-shaped block naming a
  declared tool (read by the model's format, loose blocks included).
- false calls (model wrote one): irrelevance entries answered with `tool_calls`; in parentheses,
  the entries where the model wrote a call to a declared tool at all, returned or left in the text.
  An arm that never returns calls has no false calls without the model having known better.
"""


def entries(category: str, n: int) -> list[tuple[str, list[Tool], list[Message]]]:
    out = []
    for entry in bfcl.load_category(category)[:n]:
        tools = [bfcl.to_tool(doc) for doc in entry["function"]]
        turn = entry["question"][0]
        out.append((entry["id"], tools, [Message(m["role"], m["content"]) for m in turn]))
    return out


def wire_tools(tools: list[Tool]) -> list[dict[str, Any]]:
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]  # fmt: skip


def chat_answer(url: str, model: str, tools: list[Tool], messages: list[Message]) -> Answer:
    body = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "tools": wire_tools(tools),
        "tool_choice": "auto",
        "temperature": 0,
        "max_tokens": MAX_TOKENS,
    }
    r = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    if r.status_code != 200:
        return {"calls": [], "content": "", "finish": f"http {r.status_code}: {r.text[:200]}"}
    choice = r.json()["choices"][0]
    calls = [[c["function"]["name"], c["function"]["arguments"]] for c in choice["message"].get("tool_calls") or []]
    return {"calls": calls, "content": choice["message"].get("content") or "", "finish": choice["finish_reason"]}


def raw_answer(url: str, template: str, fmt_name: str, tools: list[Tool], messages: list[Message]) -> Answer:
    fmt = get_format(fmt_name)
    prompt = render_chat(template, fmt, messages, tools)
    body = {"prompt": prompt, "n_predict": MAX_TOKENS, "temperature": 0, "cache_prompt": True}
    text = httpx.post(url + "/completion", json=body, timeout=600).json()["content"]
    parsed = strict_parse(fmt_name, text)
    return {
        "calls": [[c.name, c.arguments] for c in parsed.calls if c.error is None],
        "content": parsed.content,
        "finish": "raw",
        "text": text,
    }


def strict_parse(fmt_name: str, text: str) -> Any:
    """The template's own syntax only: for hermes, `<tool_call>` tags without the loose reading."""
    fmt = get_format(fmt_name)
    if fmt_name != "hermes":
        return fmt.parse(text)
    from server.toolcalls.hermes import CLOSE, OPEN, _parse_body
    from server.toolcalls.scan import MarkerScan
    from server.toolcalls.streaming import MarkerStreamParser, parse_with, without_think

    return parse_with(without_think(MarkerStreamParser(OPEN, lambda: MarkerScan(CLOSE), _parse_body)), text)


def score(category: str, entry_id: str, tools: list[Tool], answer: Answer, fmt_name: str) -> dict[str, int]:
    by_name = {t.name: t for t in tools}
    calls = answer["calls"]
    decoded = []
    valid = bool(calls)
    for name, arguments in calls:
        try:
            args = json.loads(arguments)
            jsonschema.validate(args, by_name[name].parameters)
            decoded.append((name, args))
        except (KeyError, ValueError, jsonschema.ValidationError):
            valid = False
    in_text = any(c.name in by_name for c in get_format(fmt_name).parse(answer["content"]).calls)
    lost = not calls and in_text
    if category == "irrelevance":
        # "wrote": the model wrote a call to a declared tool, returned as a call or left in the text;
        # an arm that returns no calls at all has no false calls, not a model that knew better.
        return {
            "n": 1,
            "ok": int(not calls),
            "called": int(bool(calls)),
            "valid": int(valid),
            "lost": 0,
            "false": int(bool(calls)),
            "wrote": int(bool(calls) or in_text),
        }
    possible = bfcl.load_possible_answers(category)[entry_id]
    ok = valid and bfcl_ast.match_calls(by_name, decoded, possible).ok
    return {
        "n": 1,
        "ok": int(ok),
        "called": int(bool(calls)),
        "valid": int(valid),
        "lost": int(lost),
        "false": 0,
        "wrote": 0,
    }


def run_arms(
    asks: dict[str, Callable[[list[Tool], list[Message]], Answer]], model_dir: Path, categories: list[str], n: int
) -> None:
    """Entry by entry, round robin over categories and arms, so a run cut short leaves every arm and
    category with (nearly) the same entries answered."""
    todo = {c: entries(c, n) for c in categories}
    done: dict[tuple[str, str], set[str]] = {}
    for arm in asks:
        for category in categories:
            done[arm, category] = set(_answers(model_dir / arm / f"{category}.jsonl"))
    for i in range(n):
        for category in categories:
            if i >= len(todo[category]):
                continue
            entry_id, tools, messages = todo[category][i]
            for arm, ask in asks.items():
                if entry_id in done[arm, category]:
                    continue
                answer = {"id": entry_id, **ask(tools, messages)}
                path = model_dir / arm / f"{category}.jsonl"
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a") as f:
                    f.write(json.dumps(answer, ensure_ascii=False) + "\n")
                print(f"{arm} {category} {entry_id}: {len(answer['calls'])} call(s), {answer['finish']}", flush=True)


def table(model: str, model_dir: Path, categories: list[str], n: int, fmt_name: str) -> str:
    rows = [
        "| category | arm | entries | AST accuracy | valid-call rate | calls lost as text "
        "| false calls (model wrote one) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for category in categories:
        wanted = {entry_id: tools for entry_id, tools, _ in entries(category, n)}
        answered = {arm: _answers(model_dir / arm / f"{category}.jsonl") for arm in ARMS}
        # score the entries every arm has answered, so the arms are compared on the same prompts
        common = set(wanted).intersection(*(set(a) for a in answered.values() if a))
        for arm in ARMS:
            answers = [a for entry_id, a in answered[arm].items() if entry_id in common]
            totals: dict[str, int] = {"n": 0, "ok": 0, "called": 0, "valid": 0, "lost": 0, "false": 0, "wrote": 0}
            for a in answers:
                for k, v in score(category, a["id"], wanted[a["id"]], a, fmt_name).items():
                    totals[k] += v
            if not totals["n"]:
                continue
            valid = "-" if category == "irrelevance" else f"{totals['valid'] / totals['n']:.2f}"
            false = f"{totals['false']}/{totals['n']} ({totals['wrote']})" if category == "irrelevance" else "-"
            lost = "-" if category == "irrelevance" else str(totals["lost"])
            rows.append(
                f"| {category} | {arm} | {totals['n']} | {totals['ok'] / totals['n']:.2f} | {valid} | {lost} "
                f"| {false} |"
            )
    return f"### {model}\n\n" + "\n".join(rows) + "\n"


def _answers(path: Path) -> dict[str, Answer]:
    if not path.exists():
        return {}
    return {a["id"]: a for a in map(json.loads, path.read_text().splitlines())}


@contextmanager
def servers(path: Path, threads: int) -> Iterator[tuple[str, str]]:
    from tests.support.live import live_gateway
    from tests.support.upstreams import llama_server

    with (
        tempfile.TemporaryDirectory() as logs,
        llama_server(path, Path(logs), slots=1, ctx=4096, extra=("--jinja", "-t", str(threads))) as upstream,
    ):
        gateway = live_gateway(path, **{"model.threads": threads})
        live = next(gateway)
        try:
            yield upstream.url, live.base_url
        finally:
            gateway.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
    p.add_argument("--categories", nargs="+", default=CATEGORIES)
    p.add_argument("--per-category", type=int, default=40)
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads, the same in every arm")
    p.add_argument("--score-only", action="store_true", help="score the saved answers, ask nothing")
    p.add_argument("--write", action="store_true", help="rewrite this section of docs/benchmarks.md")
    args = p.parse_args()
    exit_on_sigterm()
    sections = []
    for name in args.models:
        model = catalogue.find(name)
        if model is None:
            raise SystemExit(f"unknown catalogue model {name}")
        path = fetch.fetch(model)
        from gguf import GGUFReader

        field = GGUFReader(path).fields["tokenizer.chat_template"]
        template = bytes(field.parts[field.data[0]]).decode()
        fmt_name = detect_format(template).format
        model_dir = OUT / name
        if not args.score_only:
            with servers(path, args.threads) as (upstream, gateway):
                asks: dict[str, Callable[[list[Tool], list[Message]], Answer]] = {
                    "raw": partial(raw_answer, upstream, template, fmt_name),
                    "llama-server": partial(chat_answer, upstream, name),
                    "callgate": partial(chat_answer, gateway, name),
                }
                run_arms({arm: asks[arm] for arm in args.arms}, model_dir, args.categories, args.per_category)
        sections.append(table(name, model_dir, args.categories, args.per_category, fmt_name))
    body = READING + "\n" + "\n".join(sections)
    print(body)
    if args.write:
        write_section(
            "BFCL on real models: unconstrained vs llama-server --jinja vs callgate",
            body,
            ("llama-cpp-python", "llguidance"),
        )


if __name__ == "__main__":
    main()
