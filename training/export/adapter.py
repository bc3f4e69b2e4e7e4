"""`python -m training export`: a trained PEFT adapter -> `adapters/<name>/`, the folder the
gateway's adapter registry serves: the PEFT files (vLLM), a GGUF LoRA (llama.cpp, written by
training/export/gguf_lora.py), the base model's chat template and a manifest (server/adapters/manifest.py).

The folder is built beside its target and renamed into place only once complete, so a reader
never sees half an adapter; a re-export swaps the old folder out in the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from server.adapters.manifest import (
    NAME_PATTERN,
    VLLM_RANKS,
    AdapterFilesSpec,
    AdapterManifest,
    BaseModelRef,
    LoraSpec,
    read_manifest,
    sha256_files,
    write_manifest,
)
from server.toolcalls import format_names
from server.toolcalls.detect import detect_format
from training.bases import resolve_base
from training.recipes.common import TOOL_PROMPT_FILE

if TYPE_CHECKING:
    from training.__main__ import SubParsers
    from training.bases import Base

# Staging area inside the adapters folder (same file system, so renames are atomic); the
# registry only reads folders that hold a manifest.json directly, never this one.
STAGING = ".staging"
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


class ExportError(ValueError):
    """The adapter cannot be exported as asked; the message names the fix."""


@dataclass(frozen=True)
class ExportOptions:
    base_gguf: Path | None = None  # the base GGUF llama.cpp serves; default <base>/model.gguf if present
    base_id: str | None = None  # default: the adapter's base_model_name_or_path, else the base folder
    tool_format: str | None = None  # default: detected from the base's chat template
    tool_choice: Literal["auto", "required", "none"] = "auto"
    no_tool_threshold: float | None = None  # auto's no-tool threshold calibrated on this adapter
    scores: dict[str, float] = field(default_factory=dict)
    data_sha256: str | None = None
    f16: bool = False  # GGUF LoRA in half precision (F32 by default: exact parity)


def export_adapter(
    adapter_dir: Path, base_dir: Path, name: str, out: Path = Path("adapters"), options: ExportOptions | None = None
) -> Path:
    """Write `out/<name>/` from the PEFT adapter in `adapter_dir` trained on `base_dir` (a
    transformers folder, or a GGUF file or catalogue name: its dequantized folder, and the GGUF
    the LoRA is written for and whose sha256 the manifest records)."""
    from training.export.gguf_lora import LoraConversionError, convert_lora, read_json
    from training.export.gguf_model import OutType

    options = options or ExportOptions()
    base = resolve_base(str(base_dir))
    base_dir = base.folder
    if re.fullmatch(NAME_PATTERN, name) is None:
        raise ExportError(f"adapter name {name!r} must match {NAME_PATTERN} (it is served as a model name)")
    peft_config = read_json(adapter_dir / PEFT_FILES[0])
    check_vllm_rank(peft_config)
    template = base_chat_template(base_dir)
    stage = out / STAGING / uuid.uuid4().hex
    folder = stage / name
    folder.mkdir(parents=True)
    try:
        for file in PEFT_FILES:
            shutil.copy2(adapter_dir / file, folder / file)
        outtype = OutType.F16 if options.f16 else OutType.F32
        try:
            lora = convert_lora(adapter_dir, base_dir, folder / str(AdapterFilesSpec().gguf), outtype)
        except LoraConversionError as exc:
            raise ExportError(f"{adapter_dir}: {exc}") from exc
        (folder / AdapterFilesSpec().chat_template).write_text(template, encoding="utf-8")
        lora_spec = LoraSpec(
            rank=int(peft_config["r"]),
            alpha=float(peft_config["lora_alpha"]),
            dropout=float(peft_config.get("lora_dropout") or 0.0),
            target_modules=list(lora.target_modules),
            use_rslora=bool(peft_config.get("use_rslora")),
        )
        prompt = _trained_prompt(adapter_dir)
        write_manifest(folder, _manifest(name, base, peft_config, template, lora_spec, prompt, options))
        return _publish(folder, out / name, stage)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        _remove_if_empty(out / STAGING)


def _trained_prompt(adapter_dir: Path) -> str | None:
    """The tool prompt digest training recorded beside the adapter (none: a template with a tool
    section, or an adapter from before the record)."""
    path = adapter_dir / TOOL_PROMPT_FILE
    return (path.read_text(encoding="utf-8").strip() or None) if path.is_file() else None


def _manifest(
    name: str,
    base: Base,
    peft_config: dict[str, Any],
    template: str,
    lora: LoraSpec,
    prompt: str | None,
    options: ExportOptions,
) -> AdapterManifest:
    base_gguf = options.base_gguf or base.gguf
    if base_gguf is not None and base_gguf == base.gguf and base.gguf_sha256 is not None:
        gguf_sha256: str | None = base.gguf_sha256  # the catalogue's (verified at fetch) or hashed at conversion
    else:
        gguf_sha256 = sha256_files([base_gguf]) if base_gguf is not None else None
    from_gguf = base.gguf_sha256 is not None  # the base came from a GGUF: name it, not the cache folder
    return AdapterManifest(
        name=name,
        base_model=BaseModelRef(
            id=options.base_id
            or (base.ref if from_gguf else str(peft_config.get("base_model_name_or_path") or base.folder)),
            sha256=sha256_files(base_weight_files(base.folder)),
            gguf_sha256=gguf_sha256,
        ),
        tool_format=_tool_format(options.tool_format, template),
        tool_choice=options.tool_choice,
        no_tool_threshold=options.no_tool_threshold,
        lora=lora,
        tool_prompt_sha256=prompt,
        data_sha256=options.data_sha256,
        scores=options.scores,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )


def _publish(folder: Path, target: Path, stage: Path) -> Path:
    """Rename the complete folder into place; an old one is moved aside first, then deleted.
    (No portable atomic directory swap exists: readers may see no folder for a moment, never
    a half-written one.)"""
    old = stage / f"{target.name}.old"
    if target.exists():
        target.rename(old)
    try:
        folder.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)  # put the previous export back
        raise
    return target


def _remove_if_empty(path: Path) -> None:
    with contextlib.suppress(OSError):  # another export is staging there, or it never existed
        path.rmdir()


# --- what the manifest records --------------------------------------------------------------


def check_vllm_rank(peft_config: dict[str, Any]) -> int:
    """The smallest `--max-lora-rank` vLLM needs for this adapter (it accepts only VLLM_RANKS)."""
    ranks = [int(peft_config["r"]), *(int(r) for r in (peft_config.get("rank_pattern") or {}).values())]
    rank = max(ranks)
    fitting = [r for r in VLLM_RANKS if r >= rank]
    if not fitting:
        raise ExportError(
            f"LoRA rank {rank} exceeds vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]}); retrain with a smaller r"
        )
    return fitting[0]


def base_chat_template(base_dir: Path) -> str:
    """The base tokenizer's chat template: chat_template.jinja (transformers 5) or tokenizer_config."""
    path = base_dir / "chat_template.jinja"
    if path.is_file():
        return path.read_text(encoding="utf-8")
    config_path = base_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    template = config.get("chat_template")
    if not isinstance(template, str):
        raise ExportError(
            f"{base_dir} has no chat template (chat_template.jinja or tokenizer_config.json); "
            "the adapter must be served with the template it was trained on"
        )
    return template


def base_weight_files(base_dir: Path) -> list[Path]:
    files = sorted(base_dir.glob("*.safetensors"))
    if not files:
        raise ExportError(f"{base_dir} holds no .safetensors weights to hash")
    return files


def read_scores(metrics: Path) -> dict[str, float]:
    """Numeric leaves of an evaluation metrics.json, nested keys joined with '.'."""
    data = json.loads(metrics.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ExportError(f"{metrics} is not a JSON object of scores")
    return dict(_numeric_leaves(data, ""))


def _numeric_leaves(data: dict[str, Any], prefix: str) -> list[tuple[str, float]]:
    leaves: list[tuple[str, float]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            leaves += _numeric_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            leaves.append((f"{prefix}{key}", float(value)))
    return leaves


def _tool_format(given: str | None, template: str) -> str:

    if given is None:
        return detect_format(template).format
    if given not in format_names():
        raise ExportError(f"unknown tool format {given!r}; known: {', '.join(format_names())}")
    return given


# --- command line ---------------------------------------------------------------------------


def add_command(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "export",
        help="export a PEFT adapter to adapters/<name>/ (PEFT files, GGUF LoRA, manifest)",
        description="Package a trained PEFT LoRA for the gateway: vLLM reads the PEFT files, llama.cpp "
        "the GGUF LoRA; the manifest binds base model, tool format, chat template and scores.",
    )
    parser.add_argument("--adapter", type=Path, required=True, help="PEFT folder (adapter_config.json, weights)")
    parser.add_argument(
        "--base",
        "--base-model",
        dest="base",
        type=Path,
        required=True,
        help="the base model: transformers folder, GGUF file or catalogue name",
    )
    parser.add_argument(
        "--base-gguf",
        type=Path,
        help="the base GGUF served (default: the --base GGUF or catalogue model, else <base>/model.gguf)",
    )
    parser.add_argument("--base-id", help="hub id or path recorded as the base model")
    parser.add_argument("--name", required=True, help="adapter name, served as a model name")
    parser.add_argument("--out", type=Path, default=Path("adapters"), help="adapters folder")
    parser.add_argument("--eval", type=Path, help="evaluation metrics.json; numeric values become scores")
    parser.add_argument("--data-hash", help="sha256 of the training data")
    parser.add_argument("--tool-format", help="tool-call format (default: detected from the chat template)")
    parser.add_argument("--tool-choice", choices=("auto", "required", "none"), default="auto")
    parser.add_argument(
        "--no-tool-threshold", type=_unit, help="auto's no-tool threshold calibrated on this adapter (0-1)"
    )
    parser.add_argument("--f16", action="store_true", help="half-precision GGUF LoRA (default F32)")
    parser.set_defaults(handler=_run)


def _unit(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _run(args: argparse.Namespace) -> int:
    from training.export.gguf_lora import read_json

    options = ExportOptions(
        base_gguf=args.base_gguf,
        base_id=args.base_id,
        tool_format=args.tool_format,
        tool_choice=args.tool_choice,
        no_tool_threshold=args.no_tool_threshold,
        scores=read_scores(args.eval) if args.eval else {},
        data_sha256=args.data_hash,
        f16=args.f16,
    )
    try:
        folder = export_adapter(args.adapter, args.base, args.name, args.out, options)
    except (ExportError, FileNotFoundError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    manifest = read_manifest(folder)
    summary = {
        "folder": str(folder),
        "tool_format": manifest.tool_format,
        "rank": manifest.lora.rank,
        "vllm_max_lora_rank": check_vllm_rank(read_json(folder / PEFT_FILES[0])),
        "base_gguf_sha256": manifest.base_model.gguf_sha256,
        "files": sorted(p.name for p in folder.iterdir()),
    }
    print(json.dumps(summary, indent=2))
    return 0
