"""What the SFT and DPO recipes share, so that neither is the other's utility library: reading
JSONL rows, the chat template, dtype and LoRA-rank rules, the checks that keep an adapter
servable by vLLM and llama.cpp, the run folder's start and end, the trainer arguments and the
training call both set alike, and the command-line body. Heavy libraries (torch, tqdm,
transformers) are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from server.adapters.manifest import VLLM_RANKS, atomic_write_text
from server.toolcalls.prompting import detected_format, prompt_sha256
from training.bases import is_gguf_ref, resolve_base
from training.recipes.loader import dump_yaml, load_recipe

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)
T = TypeVar("T")
TEMPLATE_FILE = "chat_template.jinja"  # saved beside an adapter: the template it was trained with
# ... and for a template without a tool section, the digest of the gateway's tool prompt wording
# it was trained on, which export copies into the manifest (server/toolcalls/prompting.py)
TOOL_PROMPT_FILE = "tool_prompt.sha256"


def read_json_lines(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSONL file and the number of lines that were not one (skipped)."""
    records, bad = [], 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(obj, dict):
                records.append(obj)
            else:
                bad += 1
    return records, bad


def progress(items: Sequence[T], desc: str) -> Iterable[T]:
    """A progress bar on stderr for long loops (tqdm ships with transformers)."""
    from tqdm.auto import tqdm

    bar: Iterable[T] = tqdm(items, desc=desc, unit="rec", file=sys.stderr, mininterval=1.0, disable=len(items) < 500)
    return bar


def chat_template(config_template: str | None, tokenizer: PreTrainedTokenizerBase) -> str:
    if config_template:
        return Path(config_template).read_text(encoding="utf-8")
    template = tokenizer.chat_template
    if not isinstance(template, str) or not template:
        raise ValueError("the tokenizer has no chat template; set chat_template to a .jinja file")
    return template


def pick_dtype(name: str) -> torch.dtype:
    """`auto`: bfloat16 where the hardware multiplies in it (a CUDA GPU that supports it, a CPU
    with AMX or AVX512-BF16: 2x the SFT steps/s of float32 on such a Xeon), float32 elsewhere
    (on an AVX2-only CPU an SFT step of SmolLM2-135M's shape is 14x slower in bfloat16: bench_sft.py)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def cpu_has_bf16() -> bool:
    caps = torch_cpu_capabilities()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def torch_cpu_capabilities() -> dict[str, Any]:
    import torch

    return dict(torch.cpu.get_capabilities())


def check_rank(rank: int) -> None:
    if rank not in VLLM_RANKS:
        raise ValueError(f"lora_r={rank} cannot be served by vLLM; use one of {VLLM_RANKS}")


def embedding_rows(model: Any) -> int:
    return int(model.get_input_embeddings().weight.shape[0])


def check_adapter(model: Any, vocab_rows: int) -> None:
    """Refuse what vLLM and llama.cpp cannot load: modules_to_save, resized embeddings, odd ranks."""
    for name, cfg in model.peft_config.items():
        if getattr(cfg, "modules_to_save", None):
            raise ValueError(f"adapter {name!r} has modules_to_save={cfg.modules_to_save}; vLLM refuses those")
        check_rank(int(cfg.r))
    rows = embedding_rows(model)
    if rows != vocab_rows:
        raise ValueError(f"the embeddings were resized ({vocab_rows} -> {rows}); adapters must not add tokens")


@dataclass
class TrainerSetup:
    """A ready TRL trainer and what its recipe needs after training (tests inspect its batches)."""

    trainer: Any
    run_dir: Path
    tokenizer: Any
    template: str
    vocab_rows: int
    data: dict[str, Any]  # what rendering kept and skipped, for metrics.json


def open_run(command: str, config: Any, out: Path | None) -> tuple[Path, Any]:
    """The run folder with the recipe written into it, and the base's tokenizer. `config` is an
    SFT or DPO recipe (these helpers read the fields the two share)."""
    import torch
    from transformers import AutoTokenizer

    from training.recipes import runs

    if config.threads:
        torch.set_num_threads(config.threads)
    run_dir = runs.make_run_dir(command, out)
    atomic_write_text(run_dir / runs.CONFIG, dump_yaml(config))
    return run_dir, AutoTokenizer.from_pretrained(resolve_base(config.base_model).model)


def schedule_args(config: Any, run_dir: Path, dtype: torch.dtype, has_eval: bool) -> dict[str, Any]:
    """The TRL arguments SFT and DPO set alike from their recipes' shared fields."""
    import torch

    from training.recipes.runs import CHECKPOINTS

    cuda = torch.cuda.is_available()
    eval_every = has_eval and config.eval_steps is not None
    return {
        "output_dir": str(run_dir / CHECKPOINTS),
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": config.warmup,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "logging_steps": config.logging_steps,
        "save_steps": config.save_steps,
        "save_total_limit": config.save_total_limit,
        "eval_strategy": "steps" if eval_every else "no",
        "eval_steps": config.eval_steps if eval_every else None,
        "seed": config.seed,
        "bf16": dtype == torch.bfloat16,
        "fp16": dtype == torch.float16,
        "gradient_checkpointing": cuda if config.gradient_checkpointing is None else config.gradient_checkpointing,
        "report_to": "none",
        "dataloader_pin_memory": cuda,
        "use_cpu": not cuda,  # on CPU, what lets torchrun / accelerate run DDP over gloo
    }


def train(setup: TrainerSetup, resume: bool) -> dict[str, Any]:
    """Train (from the run's last checkpoint with `resume`), then evaluate where there is a
    validation set: the metrics for metrics.json."""
    from training.recipes import runs

    trainer = setup.trainer
    checkpoint = runs.last_checkpoint(setup.run_dir) if resume else None
    if resume and checkpoint is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", setup.run_dir)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    metrics: dict[str, Any] = {
        **result.metrics,
        "global_step": result.global_step,
        "resumed_from": str(checkpoint) if checkpoint else None,
        **setup.data,
    }
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    return metrics


def save_lora(model: Any, setup: TrainerSetup, base_model: str, folder: Path) -> None:
    """The trained "default" adapter only (never DPO's "ref" copy), checked servable, with the
    base it was trained on and the template it was trained with."""
    check_adapter(model, setup.vocab_rows)
    model.peft_config["default"].base_model_name_or_path = model_ref(base_model)
    model.save_pretrained(folder, selected_adapters=["default"])
    (folder / TEMPLATE_FILE).write_text(setup.template, encoding="utf-8")
    digest = prompt_sha256(setup.template, detected_format(setup.template))
    if digest is not None:  # the gateway's tool prompt wording, part of what the adapter learnt
        (folder / TOOL_PROMPT_FILE).write_text(digest + "\n")


def finish_run(run_dir: Path, metrics: dict[str, Any], plots: Mapping[str, Sequence[str]]) -> None:
    """metrics.json, and plots/<name>.png of the logged `keys` for each name."""
    from training.recipes import runs

    log_lines = runs.read_log(run_dir / runs.LOG)
    made = [runs.plot_curves(log_lines, keys, run_dir / "plots" / f"{name}.png", name) for name, keys in plots.items()]
    metrics["plots"] = [str(p) for p in made if p is not None]
    runs.write_json(run_dir / runs.METRICS, metrics)


def model_ref(base: str) -> str:
    """A local base model is recorded by absolute path, a hub id as is; a GGUF file or catalogue
    name by its dequantized folder (which names its GGUF: training/bases.py)."""

    if is_gguf_ref(base):
        base = resolve_base(base).model
    path = Path(base)
    return str(path.resolve()) if path.exists() else base


def add_common_flags(parser: argparse.ArgumentParser, default_recipe: Path) -> None:
    parser.add_argument("--config", type=Path, default=default_recipe, help="YAML recipe")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field (repeatable), e.g. --set lora_r=8",
    )
    parser.add_argument("--out", type=Path, help="run folder (default runs/<command>-<time>)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")


def run_trainer_cli(
    config_cls: type[T], run: Callable[..., Any], args: argparse.Namespace, extra: Mapping[str, Any]
) -> int:
    """The sft / dpo command body: recipe + flags -> `run(config, out, resume=)`; bad recipes,
    paths and data exit 2 with the reason; the result is printed as JSON."""

    try:
        config = load_recipe(config_cls, args.config, args.set, extra)
    except (OSError, ValueError) as exc:  # RecipeError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.resume and args.out is None:
        print("--resume needs --out (the run folder to continue)", file=sys.stderr)
        return 2
    try:
        result = run(config, args.out, resume=args.resume)
    except (OSError, ValueError) as exc:  # bad paths, no usable data, a rank vLLM refuses
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        json.dumps(
            {
                "run_dir": str(result.run_dir),
                "output": str(result.output),
                **{k: v for k, v in result.metrics.items() if isinstance(v, int | float | str)},
            },
            indent=2,
        )
    )
    return 0
