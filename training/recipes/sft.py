"""Supervised fine-tuning: TRL's SFTTrainer over a PEFT LoRA (or the full model), on records
rendered by training.recipes.render (the gateway's template renderer, assistant-only loss mask) and
handed to TRL pre-tokenized, so TRL never re-renders. Writes a run folder (training.recipes.runs) and
publishes `adapter/` or `model/` atomically. `run_sft` is the in-process API (build-demo and
RAFT call it); `add_command` is the `python -m training sft` CLI.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from training.bases import resolve_base
from training.recipes.calllines import line_records
from training.recipes.common import (
    TEMPLATE_FILE,
    TrainerSetup,
    add_common_flags,
    chat_template,
    check_adapter,
    check_rank,
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
from training.recipes.render import render_records

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback

    from training.recipes.render import RenderStats

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class SFTConfig:
    """One SFT recipe (training/configs/sft*.yaml); every field can be overridden with --set."""

    base_model: str = ""  # a transformers folder, hub id, GGUF file or catalogue name (training/bases.py)
    train: tuple[str, ...] = ()  # canonical-record JSONL files
    train_weights: tuple[float, ...] = ()  # per train file: 1 = once, 0.3 = a seeded 30%, 2 = twice
    val: str | None = None  # JSONL for eval_loss
    chat_template: str | None = None  # a .jinja file instead of the tokenizer's own template
    full: bool = False  # full fine-tune (no LoRA): writes model/ instead of adapter/
    init_adapter: str | None = None  # continue training this PEFT adapter folder
    lora_r: int = 16  # must be one of vLLM's ranks (server.adapters.manifest.VLLM_RANKS)
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)  # "all-linear" = every Linear but lm_head
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup: float = 0.03  # < 1: ratio of the steps; >= 1: a step count
    weight_decay: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 8
    grad_accum: int = 1
    max_len: int = 1024  # longer records are dropped (and counted), never cut
    loss_on: Literal["assistant", "all"] = "assistant"  # "all": every token (pretraining a base from scratch)
    # calls trained as bare JSON lines, not in the template's tags: for a base whose call tag is
    # a dead token (training/recipes/calllines.py)
    call_lines: bool = False
    seed: int = 0
    gradient_checkpointing: bool | None = None  # None: on with CUDA, off on CPU
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    eval_steps: int | None = None  # evaluate every N steps (and always at the end when val is set)
    save_steps: int = 200  # checkpoint every N steps, for --resume
    save_total_limit: int = 2
    logging_steps: int = 10
    threads: int | None = None  # torch CPU threads; None leaves torch's default


@dataclass(frozen=True)
class SFTResult:
    run_dir: Path
    output: Path  # run_dir/adapter or run_dir/model
    kind: Literal["adapter", "model"]
    metrics: dict[str, Any] = field(default_factory=dict)


# --- data ---------------------------------------------------------------------------------------


def mix_records(
    sources: Sequence[Sequence[dict[str, Any]]], weights: Sequence[float], seed: int
) -> list[dict[str, Any]]:
    """Each source repeated floor(w) times plus a seeded fraction w - floor(w) of it (replay mixing)."""
    if weights and len(weights) != len(sources):
        raise ValueError(f"train_weights has {len(weights)} values for {len(sources)} train files")
    rng = random.Random(seed)
    mixed: list[dict[str, Any]] = []
    for records, weight in zip(sources, weights or [1.0] * len(sources), strict=True):
        if weight < 0:
            raise ValueError("train_weights must be >= 0")
        whole, frac = int(weight), weight - int(weight)
        mixed.extend(list(records) * whole)
        mixed.extend(rng.sample(list(records), round(frac * len(records))))
    rng.shuffle(mixed)
    return mixed


def load_train_records(config: SFTConfig) -> tuple[list[dict[str, Any]], int]:
    loaded = [read_json_lines(Path(p)) for p in config.train]
    return mix_records([r for r, _ in loaded], config.train_weights, config.seed), sum(b for _, b in loaded)


def to_dataset(
    records: Sequence[Mapping[str, Any]],
    template: str,
    tokenizer: PreTrainedTokenizerBase,
    max_len: int,
    loss_on: str = "assistant",
    call_lines: bool = False,
) -> tuple[Dataset, RenderStats]:
    """Pre-tokenized rows {input_ids, assistant_masks}: TRL 1.16 builds labels from
    `assistant_masks` (-100 where 0) and skips its own chat-template tokenization."""
    from datasets import Dataset

    if call_lines:
        records = [example for record in records for example in line_records(record)]
    examples, stats = render_records(progress(records, "rendering records"), template, tokenizer, max_len)
    masks = [e.assistant_masks if loss_on == "assistant" else [1] * len(e.input_ids) for e in examples]
    if loss_on != "assistant":
        stats.loss_tokens = stats.tokens
    return Dataset.from_dict({"input_ids": [e.input_ids for e in examples], "assistant_masks": masks}), stats


# --- model ----------------------------------------------------------------------------------------


def linear_module_names(model: PreTrainedModel) -> list[str]:
    """Names (last component) of every Linear layer except the output head: what PEFT's
    "all-linear" means, spelled out so the manifest and vLLM see real module names."""
    import torch

    head = model.get_output_embeddings()  # type: ignore[no-untyped-call]
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }
    return sorted(names)


def load_model(config: SFTConfig, dtype: torch.dtype) -> PreTrainedModel | PeftModel:
    """The base model, wrapped in a trainable LoRA (new or `init_adapter`) unless `full`."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_base(config.base_model).model, dtype=dtype)
    if config.full:
        return model
    if config.init_adapter:
        return PeftModel.from_pretrained(model, config.init_adapter, is_trainable=True)
    check_rank(config.lora_r)
    targets = linear_module_names(model) if config.target_modules == ("all-linear",) else list(config.target_modules)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


# --- trainer ----------------------------------------------------------------------------------------


def trainer_args(config: SFTConfig, run_dir: Path, dtype: torch.dtype, has_eval: bool) -> Any:
    from trl.trainer.sft_config import SFTConfig as TRLConfig

    return TRLConfig(
        **schedule_args(config, run_dir, dtype, has_eval),
        weight_decay=config.weight_decay,
        max_length=None,  # render_records already dropped what does not fit
        packing=False,
        # Batches of similar lengths: less padding, which on CPU is most of the waste. (Dropping the
        # attention mask of right-padded batches was tried: TRL 1.16's compute_loss needs the mask or
        # position_ids, and fwd+bwd of the demo shape on CPU measured the same with or without it.)
        train_sampling_strategy="group_by_length",
    )


def build_trainer(
    config: SFTConfig,
    out: Path | None,
    *,
    train_records: Sequence[Mapping[str, Any]] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> TrainerSetup:
    """Render the data, load the model (LoRA unless `full`) and build TRL's SFTTrainer."""
    from trl.trainer.sft_trainer import SFTTrainer

    from training.recipes import runs

    if not config.base_model:
        raise ValueError("base_model is required")
    run_dir, tokenizer = open_run("sft", config, out)
    template = chat_template(config.chat_template, tokenizer)
    train_set, eval_set, data = build_datasets(config, train_records, template, tokenizer)
    dtype = pick_dtype(config.dtype)
    model = load_model(config, dtype)
    vocab_rows = embedding_rows(model)
    if not config.full:
        check_adapter(model, vocab_rows)
    trainer = SFTTrainer(
        model=model,
        args=trainer_args(config, run_dir, dtype, eval_set is not None),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=tokenizer,
        callbacks=[runs.JsonlLog(run_dir / runs.LOG), *callbacks],
    )
    return TrainerSetup(trainer, run_dir, tokenizer, template, vocab_rows, data)


def build_datasets(
    config: SFTConfig,
    train_records: Sequence[Mapping[str, Any]] | None,
    template: str,
    tokenizer: PreTrainedTokenizerBase,
) -> tuple[Dataset, Dataset | None, dict[str, Any]]:
    bad_lines = 0
    if train_records is None:
        train_records, bad_lines = load_train_records(config)
    train_set, stats = to_dataset(train_records, template, tokenizer, config.max_len, config.loss_on, config.call_lines)
    stats.skipped["bad_json"] += bad_lines
    if len(train_set) == 0:
        raise ValueError(f"no trainable records: {stats.as_dict()}")
    data: dict[str, Any] = {"train_data": stats.as_dict()}
    if not config.val:
        return train_set, None, data
    records, bad = read_json_lines(Path(config.val))
    eval_set, eval_stats = to_dataset(records, template, tokenizer, config.max_len, config.loss_on, config.call_lines)
    eval_stats.skipped["bad_json"] += bad
    data["val_data"] = eval_stats.as_dict()
    return train_set, (eval_set if len(eval_set) else None), data


def run_sft(
    config: SFTConfig,
    out: Path | None,
    *,
    train_records: Sequence[Mapping[str, Any]] | None = None,
    resume: bool = False,
    callbacks: Sequence[TrainerCallback] = (),
) -> SFTResult:
    """Train and publish `out/adapter` (LoRA) or `out/model` (full). `train_records` (an
    already-mixed list) replaces the config's train files; `resume` continues from the last
    checkpoint in `out`. Bad records are skipped and counted in metrics.json."""
    setup = build_trainer(config, out, train_records=train_records, callbacks=callbacks)
    trainer, run_dir = setup.trainer, setup.run_dir
    metrics = train(setup, resume)
    kind: Literal["adapter", "model"] = "model" if config.full else "adapter"
    output = run_dir / kind
    if trainer.accelerator.is_main_process:
        save_output(trainer.model, setup, config, output)
        finish_run(run_dir, metrics, {"loss": ("loss", "eval_loss")})
    trainer.accelerator.wait_for_everyone()
    return SFTResult(run_dir=run_dir, output=output, kind=kind, metrics=metrics)


def save_output(model: Any, setup: TrainerSetup, config: SFTConfig, output: Path) -> None:
    """Written to a temp folder and renamed into place: never half an adapter."""
    from training.recipes.runs import atomic_dir

    with atomic_dir(output) as tmp:
        if config.full:
            model.save_pretrained(tmp)
            setup.tokenizer.save_pretrained(tmp)
            (tmp / TEMPLATE_FILE).write_text(setup.template, encoding="utf-8")
        else:
            save_lora(model, setup, config.base_model, tmp)


# --- CLI ---------------------------------------------------------------------------------------------


def add_command(sub: Any) -> None:
    parser = sub.add_parser(
        "sft",
        help="supervised fine-tuning (LoRA or full) on canonical records",
        description="TRL SFTTrainer with a PEFT LoRA; loss on assistant turns only.",
    )
    add_common_flags(parser, CONFIGS / "sft.yaml")
    parser.add_argument("--base-model", help="transformers folder, hub id, GGUF file or catalogue name")
    parser.add_argument("--train", nargs="+", help="canonical-record JSONL files")
    parser.add_argument("--val", help="validation JSONL")
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--full", action="store_true", default=None, help="full fine-tune instead of LoRA")
    parser.set_defaults(handler=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    extra = {
        "base_model": args.base_model,
        "train": args.train,
        "val": args.val,
        "max_steps": args.max_steps,
        "full": args.full,
    }
    return run_trainer_cli(SFTConfig, run_sft, args, extra)
