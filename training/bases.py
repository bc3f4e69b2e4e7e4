"""What `--base-model` names: a transformers folder, a hub id, a GGUF file or a catalogue name.

Training needs float weights in a transformers folder; the gateway serves a (quantized) GGUF. A
GGUF or catalogue name is dequantized once by transformers (`gguf_file=`) into a cached folder,
`<cache>/<file stem>-<sha256[:16]>/`, keyed by the file's content, and that folder remembers its
source (`gguf_source.json`: file, sha256, catalogue name) so export can write the LoRA for, and
record the sha256 of, the quantized file the gateway serves. A LoRA trained on the dequantized
weights applies to the quantized GGUF: both hold the same values up to what quantization lost.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.serving.catalogue import MODELS_DIR, TEMPLATES_DIR, find, of_file
from server.serving.fetch import resolve, sha256_of

SOURCE_FILE = "gguf_source.json"
CACHE_ENV = "CALLGATE_BASES_CACHE"
DEFAULT_CACHE = Path(".cache/bases")


@dataclass(frozen=True)
class Base:
    """A resolved base model: `model` is what `from_pretrained` reads (a folder or hub id)."""

    model: str
    gguf: Path | None  # the GGUF the gateway serves with this base, when known
    gguf_sha256: str | None
    ref: str  # what to record as the base id: catalogue name, GGUF path, folder or hub id

    @property
    def folder(self) -> Path:
        return Path(self.model)


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def is_gguf_ref(spec: str) -> bool:
    """True when `spec` names a GGUF file or a catalogue model rather than a transformers model."""

    path = Path(spec)
    return (path.suffix == ".gguf" and not path.is_dir()) or (find(spec) is not None and not path.is_dir())


def resolve_base(spec: str, *, models_dir: Path | None = None, cache: Path | None = None) -> Base:
    """`spec` as a Base; a GGUF or catalogue name is fetched (if missing) and dequantized (if not
    cached yet). A folder dequantized earlier still knows its GGUF."""

    if not spec:
        raise ValueError("base_model is required")
    path = Path(spec)
    if path.is_dir():
        return _folder_base(path)
    if not is_gguf_ref(spec):
        return Base(model=spec, gguf=None, gguf_sha256=None, ref=spec)  # a hub id
    gguf_path = resolve(path, models_dir or MODELS_DIR)
    entry = find(spec) or of_file(gguf_path)
    sha = entry.sha256 if entry is not None and gguf_path.name == entry.file else sha256_of(gguf_path)
    folder = (cache or cache_dir()) / f"{gguf_path.name.removesuffix('.gguf')}-{sha[:16]}"
    if not (folder / SOURCE_FILE).is_file():
        dequantize(gguf_path, folder, sha, entry.name if entry is not None else None)
    return Base(
        model=str(folder),
        gguf=gguf_path.resolve(),
        gguf_sha256=sha,
        ref=entry.name if entry is not None else str(gguf_path),
    )


def _folder_base(folder: Path) -> Base:
    source = folder / SOURCE_FILE
    if source.is_file():
        info = json.loads(source.read_text(encoding="utf-8"))
        gguf = Path(info["gguf"])
        return Base(
            model=str(folder),
            gguf=gguf if gguf.is_file() else None,
            gguf_sha256=info["sha256"],
            ref=info.get("catalogue") or info["gguf"],
        )
    own = folder / "model.gguf"  # the tiny model's layout (training/demo/tiny.py)
    return Base(model=str(folder), gguf=own if own.is_file() else None, gguf_sha256=None, ref=str(folder.resolve()))


def dequantize(gguf_path: Path, folder: Path, sha256: str, catalogue: str | None) -> Path:
    """transformers' GGUF loader -> a float32 transformers folder (weights, tokenizer, template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.recipes.runs import atomic_dir

    where, name = str(gguf_path.resolve().parent), gguf_path.resolve().name
    model: Any = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    tokenizer: Any = AutoTokenizer.from_pretrained(where, gguf_file=name)
    # The GGUF quantizer is a loading detail: the saved folder is plain float weights.
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not tokenizer.chat_template:
        tokenizer.chat_template = _catalogue_template(catalogue)
    with atomic_dir(folder) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps({"gguf": str(gguf_path.resolve()), "sha256": sha256, "catalogue": catalogue}, indent=2),
            encoding="utf-8",
        )
    return folder


def _catalogue_template(catalogue: str | None) -> str | None:

    entry = find(catalogue) if catalogue else None
    if entry is None or entry.chat_template is None:
        return None
    return (TEMPLATES_DIR / entry.chat_template).read_text(encoding="utf-8")


def dead_tags(folder: Path, tags: Sequence[str]) -> bool:
    """True when `tags` (a call format's open and close markers) are single tokens of the base
    whose output rows are the same vector (cosine > 0.999): the model cannot write one without the
    other, so it was never trained to write either. Qwen2.5-Coder's `<tool_call>` and `</tool_call>`
    are such a pair in its GGUFs (docs/demo.md); a base trained on its tags has distinct rows."""
    import torch
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(folder)
    ids = [tokenizer(tag, add_special_tokens=False)["input_ids"] for tag in tags]
    if len(ids) < 2 or any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(ids):
        return False
    rows = _output_rows(folder, [i[0] for i in ids])
    if rows is None:
        return False
    sims = torch.nn.functional.cosine_similarity(rows[:1], rows[1:])
    return bool((sims > 0.999).all())


def _output_rows(folder: Path, ids: Sequence[int]) -> Any:
    """The output head's rows for `ids` (the input embedding's when the two are tied), read
    from the folder's safetensors without loading the model; None if neither is there."""
    import torch
    from safetensors import safe_open

    found: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), "pt") as weights:
            names = weights.keys()  # safe_open is not iterable
            found |= {key: file for key in names if key.endswith(("lm_head.weight", "embed_tokens.weight"))}
    key = next((k for k in found if k.endswith("lm_head.weight")), None) or next(iter(found), None)
    if key is None:
        return None
    with safe_open(str(found[key]), "pt") as weights:
        table = weights.get_slice(key)
        return torch.stack([table[i : i + 1][0].float() for i in ids])
