"""DPO with TRL's real DPOTrainer on top of a real SFT adapter of the tiny model: a few steps
raise the chosen-vs-rejected margin on the training pairs, the reference (the SFT adapter,
frozen) does not move, and only the trained adapter is published."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.training_records import MULTI_TURN, NO_TOOL, RECORDS, SINGLE, TOOLS, call
from training.recipes.dpo import DPOConfig

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]


def assistant(*calls: dict[str, Any], content: str | None = None) -> dict[str, Any]:
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def pair(prompt: list[dict[str, Any]], chosen: dict[str, Any], rejected: dict[str, Any], kind: str) -> dict[str, Any]:
    return {
        "messages": prompt,
        "tools": TOOLS,
        "chosen": chosen,
        "rejected": rejected,
        "meta": {"kind": kind, "source": "test"},
    }


PAIRS = [
    pair(
        SINGLE["messages"][:-1],
        SINGLE["messages"][-1],
        assistant(call("get_weather", {"city": "Paris", "unit": "f"})),
        "wrong_value",
    ),
    pair(SINGLE["messages"][:-1], SINGLE["messages"][-1], assistant(call("get_weather", {"unit": "c"})), "missing_arg"),
    pair(
        MULTI_TURN["messages"][:2],
        MULTI_TURN["messages"][2],
        assistant(call("order_status", {"order_id": "42"})),
        "wrong_type",
    ),
    pair(
        MULTI_TURN["messages"][:2],
        MULTI_TURN["messages"][2],
        assistant(call("get_weather", {"city": "42"})),
        "wrong_function",
    ),
    pair(
        NO_TOOL["messages"][:-1],
        NO_TOOL["messages"][-1],
        assistant(call("get_weather", {"city": "Hi"})),
        "call_on_irrelevant",
    ),
]


@pytest.fixture(scope="module")
def sft_adapter(tiny_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.recipes.sft import SFTConfig, run_sft

    cfg = SFTConfig(
        base_model=str(tiny_model.hf_dir),
        lora_r=8,
        batch_size=2,
        max_steps=3,
        learning_rate=5e-3,
        warmup=0,
        save_steps=100,
        threads=1,
    )
    return run_sft(cfg, tmp_path_factory.mktemp("sft"), train_records=RECORDS).output


def config(tiny_model: Any, sft_adapter: Path, **changes: Any) -> DPOConfig:
    base = DPOConfig(
        base_model=str(tiny_model.hf_dir),
        adapter=str(sft_adapter),
        batch_size=5,
        max_steps=6,
        learning_rate=2e-3,
        warmup=0,
        lr_scheduler="constant",
        logging_steps=1,
        save_steps=100,
        beta=0.1,
        threads=1,
    )
    return dataclasses.replace(base, **changes)


def margins(model: Any, tokenizer: Any, template: str) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt), per training pair."""
    import torch

    from training.recipes.render import render_pair

    def logp(prompt: str, answer: str) -> float:
        n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float().log_softmax(-1)
        return sum(logits[0, k - 1, ids[0, k]].item() for k in range(n, ids.shape[1]))

    model.eval()
    texts = [render_pair(p, template, tokenizer) for p in PAIRS]
    return [logp(t.prompt, t.chosen) - logp(t.prompt, t.rejected) for t in texts]


def test_pairs_render_as_served_continuations(tiny_model: Any) -> None:
    from transformers import AutoTokenizer

    from training.recipes.render import render_pair

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    text = render_pair(PAIRS[2], tokenizer.chat_template, tokenizer)
    assert text.prompt.endswith("<|im_start|>assistant\n") and "Where is order 42?" in text.prompt
    assert text.chosen == '<tool_call>\n{"name": "order_status", "arguments": {"order_id": 42}}\n</tool_call><|im_end|>'
    assert text.rejected.endswith('{"order_id": "42"}}\n</tool_call><|im_end|>')


def test_kinds_choose_the_pairs_trained_on(tiny_model: Any, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from training.recipes.dpo import build_datasets

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    unmarked = {k: v for k, v in PAIRS[0].items() if k != "meta"}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in [*PAIRS, unmarked]))
    conf = DPOConfig(pairs=(str(path),), val=str(path))
    every, _, data = build_datasets(conf, None, tokenizer.chat_template, tokenizer)
    assert len(every) == len(PAIRS) + 1
    chosen = dataclasses.replace(conf, kinds=("wrong_function", "call_on_irrelevant"))
    two, val, data = build_datasets(chosen, None, tokenizer.chat_template, tokenizer)
    assert len(two) == 2 and val is not None and len(val) == 2  # the pair with no kind is in no kind
    assert sorted(two["rejected"]) == sorted(r for r in every["rejected"] if '"city": "42"' in r or '"city": "Hi"' in r)
    with pytest.raises(ValueError, match="no usable pairs"):
        build_datasets(dataclasses.replace(conf, kinds=("extra_call",)), None, tokenizer.chat_template, tokenizer)


def test_unusable_pairs_are_skipped_and_counted(tiny_model: Any) -> None:
    from transformers import AutoTokenizer

    from training.recipes.render import render_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    bad = [
        {**PAIRS[0], "rejected": PAIRS[0]["chosen"]},  # nothing to prefer
        {**PAIRS[0], "chosen": {"role": "user", "content": "x"}},
        {**PAIRS[0], "messages": []},
    ]
    kept, stats = render_pairs([*bad, PAIRS[0]], tokenizer.chat_template, tokenizer, max_len=4096)
    assert len(kept) == 1 and dict(stats.skipped) == {"same_answer": 1, "bad_pair": 1, "no_messages": 1}
    _, short = render_pairs(PAIRS, tokenizer.chat_template, tokenizer, max_len=50)
    assert short.skipped["too_long"] == len(PAIRS)


@pytest.mark.slow
def test_dpo_raises_the_margin_and_keeps_the_reference(tiny_model: Any, sft_adapter: Path, tmp_path: Path) -> None:
    import torch

    from training.recipes.dpo import build_trainer, save_adapter

    # float32 named: with `auto` on a CPU that multiplies in bfloat16 the trainer leaves the model's
    # forward under bfloat16 autocast, and the reload check below would compare rounding, not files
    setup = build_trainer(config(tiny_model, sft_adapter, dtype="float32"), tmp_path / "run", train_pairs=PAIRS)
    model = setup.trainer.model
    assert set(model.peft_config) == {"default", "ref"}  # TRL's frozen copy of the SFT adapter
    before = margins(model, setup.tokenizer, setup.template)
    ref_before = {n: p.detach().clone() for n, p in model.named_parameters() if ".ref." in n}
    assert ref_before and not any(p.requires_grad for n, p in model.named_parameters() if ".ref." in n)
    setup.trainer.train()
    after = margins(model, setup.tokenizer, setup.template)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5, (before, after)
    assert sum(a > b for a, b in zip(after, before, strict=True)) >= 4
    params = dict(model.named_parameters())
    assert all(torch.equal(ref_before[n], params[n]) for n in ref_before)  # the reference never moved

    log = [json.loads(line) for line in (setup.run_dir / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log if "rewards/margins" in line] == [1, 2, 3, 4, 5, 6]

    out = setup.run_dir / "adapter"
    save_adapter(model, setup, config(tiny_model, sft_adapter), out)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "chat_template.jinja",
    ]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir), out)
    assert margins(reloaded, setup.tokenizer, setup.template) == pytest.approx(after, abs=1e-3)


@pytest.mark.slow
def test_dpo_command_writes_a_run_folder(tiny_model: Any, sft_adapter: Path, tmp_path: Path) -> None:
    from training.__main__ import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps(p) for p in PAIRS) + "\nnot json\n", encoding="utf-8")
    run = tmp_path / "run"
    code = main(
        [
            "dpo",
            "--base-model",
            str(tiny_model.hf_dir),
            "--adapter",
            str(sft_adapter),
            "--pairs",
            str(pairs),
            "--val",
            str(pairs),
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--set",
            "threads=1",
            "--set",
            "batch_size=5",
            "--set",
            "logging_steps=1",
        ]
    )
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_data"]["kept"] == len(PAIRS) and metrics["train_data"]["skipped"]["bad_json"] == 1
    assert "eval_rewards/margins" in metrics and metrics["global_step"] == 2
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["loss.png", "reward_accuracy.png", "reward_margin.png"]
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert (run / "adapter" / "chat_template.jinja").read_text() == (sft_adapter / "chat_template.jinja").read_text()
