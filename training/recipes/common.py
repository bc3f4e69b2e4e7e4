"""What the SFT and DPO recipes share, so that neither is the other's utility library: reading
JSONL rows, the chat template, dtype and LoRA-rank rules, the checks that keep an adapter
servable by vLLM and llama.cpp, the run folder's end, and the command-line body. Heavy libraries
(torch, tqdm, transformers) are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from server.adapters.manifest import VLLM_RANKS
from training.bases import is_gguf_ref, resolve_base
from training.recipes.loader import load_recipe

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

T = TypeVar("T")
TEMPLATE_FILE = "chat_template.jinja"  # saved beside an adapter: the template it was trained with


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
