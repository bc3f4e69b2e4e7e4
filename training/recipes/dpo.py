"""DPO on near-miss pairs: TRL's DPOTrainer on top of the SFT adapter. The policy is base + the
SFT adapter, trainable; the reference is the same adapter, frozen: TRL copies a PEFT model's
adapter into a second adapter named "ref" and switches to it for reference log-probs, so no
second model is loaded and the reference is exactly where SFT ended (disabling the adapter would
compare against the base model instead). Prompts are rendered by training.recipes.render with the
template the adapter was trained with; chosen / rejected are the continuation texts the gateway
would parse, end-of-turn included. `run_dpo` is the in-process API; `add_command` the CLI.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from training.bases import resolve_base
from training.recipes.calllines import line_pair
from training.recipes.common import (
    TEMPLATE_FILE,
    TrainerSetup,
    add_common_flags,
    chat_template,
    check_adapter,
    embedding_rows,
    finish_run,
    open_run,
    pick_dtype,
    progress,
    read_json_lines,
    run_trainer_cli,
    save_lora,
    schedule_args,
    train,
)
from training.recipes.render import render_pairs

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase, TrainerCallback

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PLOTS = {
    "loss": ("loss", "eval_loss"),
    "reward_margin": ("rewards/margins", "eval_rewards/margins"),
    "reward_accuracy": ("rewards/accuracies", "eval_rewards/accuracies"),
}


@dataclass(frozen=True)
class DPOConfig:
    """One DPO recipe (training/configs/dpo.yaml); every field can be overridden with --set."""

    base_model: str = ""  # the SFT adapter's base model (folder, hub id, GGUF file or catalogue name)
    adapter: str = ""  # the SFT adapter: the PEFT folder SFT wrote (run/adapter)
    pairs: tuple[str, ...] = ()  # DPO pair JSONL files
    val: str | None = None  # pairs for eval loss / reward margins
    kinds: tuple[str, ...] = ()  # the pair kinds trained on (meta.kind, training/data/pairs.py); (): all
    chat_template: str | None = None  # default: the adapter's chat_template.jinja, else the tokenizer's
    call_lines: bool = False  # both answers' calls as bare JSON lines, as the SFT adapter was trained (sft.py)
    beta: float = 0.1  # strength of the pull towards the reference
    loss_type: str = "sigmoid"  # TRL DPO loss ("sigmoid" = the DPO paper's, "ipo", ...)
    learning_rate: float = 5e-6
    lr_scheduler: str = "cosine"
    warmup: float = 0.1
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4  # pairs per step; each is two sequences
    grad_accum: int = 1
    max_len: int = 1024  # prompt + the longer answer; longer pairs are dropped and counted
    seed: int = 0
    gradient_checkpointing: bool | None = None  # None: on with CUDA, off on CPU
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    eval_steps: int | None = None
    save_steps: int = 200
    save_total_limit: int = 2
    logging_steps: int = 10
    threads: int | None = None


@dataclass(frozen=True)
class DPOResult:
    run_dir: Path
    output: Path  # run_dir/adapter
    metrics: dict[str, Any] = field(default_factory=dict)


def dpo_template(config: DPOConfig, tokenizer: PreTrainedTokenizerBase) -> str:
    """The template the SFT adapter was trained with, so DPO prompts are the served ones."""

    if config.chat_template:
        return chat_template(config.chat_template, tokenizer)
    saved = Path(config.adapter) / TEMPLATE_FILE
    return saved.read_text(encoding="utf-8") if saved.is_file() else chat_template(None, tokenizer)


def to_pair_dataset(
    pairs: Sequence[Mapping[str, Any]],
    template: str,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    call_lines: bool = False,
) -> tuple[Dataset, dict[str, Any]]:
    """Rows {prompt, chosen, rejected} of plain text, which DPOTrainer tokenizes as given. (TRL
    appends eos_token to an answer that does not end with it: with a template whose end-of-turn
    is not the tokenizer's eos_token, the answers gain one token the gateway never sees.)"""
    from datasets import Dataset

    if call_lines:
        pairs = [line_pair(pair) for pair in pairs]
    texts, stats = render_pairs(progress(pairs, "rendering pairs"), template, tokenizer, max_len)
    prompts = [_without_auto_bos(t.prompt, tokenizer) for t in texts]
    return Dataset.from_dict(
        {"prompt": prompts, "chosen": [t.chosen for t in texts], "rejected": [t.rejected for t in texts]}
    ), stats.as_dict()


def _without_auto_bos(prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
    # DPOTrainer tokenizes plain text with the tokenizer's special tokens; where it adds BOS
    # itself, drop the template's so the prompt has one BOS, as the served prompt does.
    bos = tokenizer.bos_token
    adds_bos = bos is not None and tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    return prompt[len(bos) :] if adds_bos and bos and prompt.startswith(bos) else prompt


def load_pairs(paths: Sequence[str]) -> tuple[list[dict[str, Any]], int]:
    pairs, bad = [], 0
    for path in paths:
        found, n_bad = read_json_lines(Path(path))
        pairs += found
        bad += n_bad
    return pairs, bad


def of_kinds(pairs: Sequence[Mapping[str, Any]], kinds: Sequence[str]) -> list[Mapping[str, Any]]:
    """The pairs whose meta.kind is one of `kinds` (all of them when `kinds` is empty)."""
    if not kinds:
        return list(pairs)
    meta = [p.get("meta") for p in pairs]
    return [p for p, m in zip(pairs, meta, strict=True) if isinstance(m, dict) and m.get("kind") in kinds]


def load_policy(config: DPOConfig, dtype: torch.dtype) -> Any:
    """Base + the SFT adapter as the trainable "default" adapter (TRL adds the frozen "ref")."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(resolve_base(config.base_model).model, dtype=dtype)
    return PeftModel.from_pretrained(base, config.adapter, is_trainable=True)


def trainer_args(config: DPOConfig, run_dir: Path, dtype: torch.dtype, has_eval: bool) -> Any:
    from trl.trainer.dpo_config import DPOConfig as TRLConfig

    return TRLConfig(
        **schedule_args(config, run_dir, dtype, has_eval),
        beta=config.beta,
        loss_type=[config.loss_type],
        max_length=config.max_len,
    )


def build_trainer(
    config: DPOConfig,
    out: Path | None,
    *,
    train_pairs: Sequence[Mapping[str, Any]] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainerSetup:
    from trl.trainer.dpo_trainer import DPOTrainer

    from training.recipes import runs

    if not config.base_model or not config.adapter:
        raise ValueError("base_model and adapter are required (DPO starts from the SFT adapter)")
    run_dir, tokenizer = open_run("dpo", config, out)
    template = dpo_template(config, tokenizer)
    train_set, eval_set, data = build_datasets(config, train_pairs, template, tokenizer)
    dtype = pick_dtype(config.dtype)
    model = load_policy(config, dtype)
    vocab_rows = embedding_rows(model)
    check_adapter(model, vocab_rows)
    trainer = DPOTrainer(
        model=model,
        args=trainer_args(config, run_dir, dtype, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[runs.JsonlLog(run_dir / runs.LOG), *callbacks],
    )
    return TrainerSetup(trainer, run_dir, tokenizer, template, vocab_rows, data)


def build_datasets(
    config: DPOConfig,
    train_pairs: Sequence[Mapping[str, Any]] | None,
    template: str,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    bad = 0
    if train_pairs is None:
        train_pairs, bad = load_pairs(config.pairs)
    train_pairs = of_kinds(train_pairs, config.kinds)
    train_set, stats = to_pair_dataset(train_pairs, template, tokenizer, config.max_len, config.call_lines)
    stats["skipped"]["bad_json"] = bad
    if len(train_set) == 0:
        raise ValueError(f"no usable pairs: {stats}")
    data: dict[str, Any] = {"train_data": stats}
    if not config.val:
        return train_set, None, data
    val_pairs, val_bad = load_pairs([config.val])
    eval_set, data["val_data"] = to_pair_dataset(
        of_kinds(val_pairs, config.kinds), template, tokenizer, config.max_len, config.call_lines
    )
    data["val_data"]["skipped"]["bad_json"] = val_bad
    return train_set, (eval_set if len(eval_set) else None), data


def run_dpo(
    config: DPOConfig,
    out: Path | None,
    *,
    train_pairs: Sequence[Mapping[str, Any]] | None = None,
    resume: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> DPOResult:
    """Train the SFT adapter on preference pairs and publish `out/adapter` atomically."""
    setup = build_trainer(config, out, train_pairs=train_pairs, callbacks=callbacks)
    trainer, run_dir = setup.trainer, setup.run_dir
    metrics = train(setup, resume)
    output = run_dir / "adapter"
    if trainer.accelerator.is_main_process:
        save_adapter(trainer.model, setup, config, output)
        finish_run(run_dir, metrics, PLOTS)
    trainer.accelerator.wait_for_everyone()
    return DPOResult(run_dir=run_dir, output=output, metrics=metrics)


def save_adapter(model: Any, setup: TrainerSetup, config: DPOConfig, output: Path) -> None:
    """The trained "default" adapter only (never TRL's "ref" copy), written atomically."""
    from training.recipes.runs import atomic_dir

    with atomic_dir(output) as tmp:
        save_lora(model, setup, config.base_model, tmp)


def add_command(sub: Any) -> None:
    parser = sub.add_parser(
        "dpo",
        help="DPO on near-miss pairs, on top of an SFT adapter",
        description="TRL DPOTrainer; the reference is the SFT adapter, frozen.",
    )
    add_common_flags(parser, CONFIGS / "dpo.yaml")
    parser.add_argument("--base-model", help="the SFT adapter's base model (folder, hub id, GGUF or catalogue name)")
    parser.add_argument("--adapter", help="the SFT adapter (the PEFT folder SFT wrote)")
    parser.add_argument("--pairs", nargs="+", help="DPO pair JSONL files")
    parser.add_argument("--val", help="validation pairs JSONL")
    parser.add_argument("--max-steps", type=int)
    parser.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:

    extra = {
        "base_model": args.base_model,
        "adapter": args.adapter,
        "pairs": args.pairs,
        "val": args.val,
        "max_steps": args.max_steps,
    }
    return run_trainer_cli(DPOConfig, run_dpo, args, extra)
