"""The copy curriculum: the demo base model's first lesson, before the conversations.

A model trained from scratch on whole conversations never learned, within the demo's budget, to
copy a value it cannot memorise, such as a customer's order id (docs/demo.md). Copying
needs induction heads, and with a ~300-token tool list in front of every request they did not
form. They do form on short prompts, but heads formed there alone did not carry over to long
ones. So this stage trains on the first call of services conversations (random ids that can only
be copied), loss on that call only, and shows the tool list to a growing share of the prompts:
none before `ramp[0]` of the steps, every one after `ramp[1]`. The heads form while prompts are
short and keep working as they lengthen.

Its own small loop rather than the SFT trainer: the share changes every step, and records
without their tool list would not be valid canonical records.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from server.types import Message, Tool
from training.recipes.common import chat_template
from training.recipes.render import assistant_text, record_messages
from training.recipes.runs import atomic_dir, plot_curves, write_json


@dataclass(frozen=True)
class Drill:
    """A record's history up to its first trained call, the call, and the values to copy."""

    history: tuple[Message, ...]
    tools: tuple[Tool, ...]
    call: Message
    values: tuple[str, ...]


@dataclass(frozen=True)
class CurriculumConfig:
    steps: int = 300
    learning_rate: float = 5e-4
    batch_size: int = 32
    ramp: tuple[float, float] = (1 / 3, 1.0)  # fractions of the steps: tool lists shown to 0% -> 100%
    warmup: int = 30
    seed: int = 0
    probe: int = 40  # held-out drills whose copy rate is measured at the end (0: none)


def drills(path: Path) -> list[Drill]:
    """Every record's first trained call, when it carries a value with a digit in it (an id to
    copy). Trained: an error-recovery trace's deliberately wrong first call is not."""
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        messages, tools, trained = record_messages(json.loads(line))
        for i, message in enumerate(messages):
            if message.role == "assistant" and message.tool_calls and trained[i]:
                values = tuple(
                    v
                    for call in message.tool_calls
                    for v in json.loads(call.arguments).values()
                    if isinstance(v, str) and any(c.isdigit() for c in v)
                )
                if values:
                    found.append(Drill(tuple(messages[:i]), tuple(tools), message, values))
                break
    return found


def shown_share(step: int, steps: int, ramp: tuple[float, float]) -> float:
    """The share of prompts that show their tool list at `step` (1-based) of `steps`."""
    start, end = ramp[0] * steps, ramp[1] * steps
    if end <= start:
        return 0.0 if step < start else 1.0
    return min(1.0, max(0.0, (step - start) / (end - start)))


def render(drill: Drill, template: str, tokenizer: Any, with_tools: bool) -> tuple[str, str]:
    return assistant_text(template, drill.history, drill.tools if with_tools else (), drill.call, tokenizer)


def batch_tensors(pairs: Sequence[tuple[str, str]], tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input ids, attention mask and labels; the loss falls on the call only."""
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p, _ in pairs]
    fulls = [tokenizer(p + c, add_special_tokens=False).input_ids for p, c in pairs]
    width = max(map(len, fulls))
    ids = torch.full((len(pairs), width), tokenizer.pad_token_id)
    labels = torch.full((len(pairs), width), -100)
    attention = torch.zeros((len(pairs), width), dtype=torch.long)
    for row, (prompt, full) in enumerate(zip(prompts, fulls, strict=True)):
        ids[row, : len(full)] = torch.tensor(full)
        attention[row, : len(full)] = 1
        labels[row, len(prompt) : len(full)] = torch.tensor(full[len(prompt) :])
    return ids, attention, labels


def copy_rate(model: Any, tokenizer: Any, template: str, probe: Sequence[Drill], with_tools: bool) -> float:
    """Share of drills whose greedy call holds every value to copy, exactly, as a JSON string."""
    if not probe:
        return 0.0
    model.eval()
    hits = 0
    with torch.no_grad():
        for drill in probe:
            prompt, _ = render(drill, template, tokenizer, with_tools)
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
            out = model.generate(ids, max_new_tokens=64, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids.shape[1] :])
            hits += all(json.dumps(v) in text for v in drill.values)
    model.train()
    return hits / len(probe)


def train_copy(
    init_dir: Path,
    train: Path,
    test: Path | None,
    run_dir: Path,
    output: Path,
    config: CurriculumConfig,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the model in `init_dir` on `train`'s drills, rendered with its tokenizer's chat
    template; the whole model goes to `output` (atomically), the loss log, metrics and a plot to
    `run_dir`. Returns the metrics."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pool = drills(train)
    if not pool:
        raise ValueError(f"{train}: no call with a value to copy")
    probe = drills(test)[: config.probe] if test is not None else []
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    template = chat_template(None, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(init_dir)
    model.train()
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    run_dir.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    started = time.time()
    for step in tqdm(range(1, config.steps + 1), desc="copy curriculum", unit="step", mininterval=2.0):
        share = shown_share(step, config.steps, config.ramp)
        pairs = [render(d, template, tokenizer, rng.random() < share) for d in rng.choices(pool, k=config.batch_size)]
        ids, attention, labels = batch_tensors(pairs, tokenizer)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * min(1.0, step / max(1, config.warmup))
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 10 == 0 or step == config.steps:
            log.append({"step": step, "loss": round(loss.item(), 4), "tools_shown": round(share, 3)})
    metrics: dict[str, Any] = {
        "steps": config.steps,
        "drills": len(pool),
        "seconds": round(time.time() - started, 1),
        "final_loss": log[-1]["loss"],
    }
    if probe:
        metrics["copy_rate_with_tools"] = copy_rate(model, tokenizer, template, probe, with_tools=True)
        metrics["probe_drills"] = len(probe)
        say(f"copy curriculum: {metrics['copy_rate_with_tools']:.2f} of {len(probe)} held-out calls copy every id")
    (run_dir / "log.jsonl").write_text("".join(json.dumps(line) + "\n" for line in log), encoding="utf-8")
    plot = plot_curves(log, ("loss", "tools_shown"), run_dir / "plots" / "copy.png", "copy curriculum")
    metrics["plots"] = [str(plot)] if plot else []
    write_json(run_dir / "metrics.json", metrics)
    with atomic_dir(output) as tmp:
        for item in init_dir.iterdir():  # tokenizer files and chat template, as the init had them
            if item.is_file() and item.name not in ("model.safetensors", "config.json"):
                shutil.copy2(item, tmp / item.name)
        model.save_pretrained(tmp)
    return metrics
