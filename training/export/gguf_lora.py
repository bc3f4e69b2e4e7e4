"""callgate's own PEFT LoRA -> GGUF LoRA converter (the `gguf` library), for llama.cpp.

Reads a PEFT folder (adapter_config.json, adapter_model.safetensors) and the base model's
transformers folder, and writes one GGUF that `llama_adapter_lora_init` loads on the base GGUF
from training/export/gguf_model.py: general.type "adapter", adapter.type "lora", adapter.lora.alpha,
and per adapted weight "<gguf base name>.weight.lora_a" (PEFT's A, r x in) and ".lora_b" (B,
out x r), under the same tensor names as the base exporter. It knows nothing of manifests.

Scaling: llama.cpp applies `scale * alpha / r` with one alpha per file and r read from each B.
PEFT's scale is alpha_m / r_m per module (alpha_m / sqrt(r_m) with rsLoRA). Where they differ
(rsLoRA, rank_pattern, alpha_pattern) the difference is folded in: rsLoRA alone into the file's
alpha (alpha * sqrt(r)), per-module ratios into that module's B, so outputs match exactly.
Refused with a clear error: DoRA, trained biases, modules_to_save, trainable or added tokens,
embedding targets, lm_head on a model with tied embeddings, and other PEFT types.
"""

from __future__ import annotations

import json
import math
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
from safetensors import safe_open

from training.export.gguf_model import OutType, gguf_tensor_name

# transformers model_type -> llama.cpp architecture. Both name their tensors alike; llama.cpp's
# llama loader expects q/k rows permuted (its converter's `permute`), Qwen2's does not.
ARCHES = {"qwen2": "qwen2", "llama": "llama"}

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PEFT_KEY = re.compile(r"base_model\.model\.(.+)\.lora_([AB])\.weight")
# Full weights PEFT saves beside the LoRA (save_embedding_layers="auto" copies an adapted lm_head
# as ...lm_head.base_layer.weight; modules_to_save stores trained copies): skipped only when equal
# to the base's, as llama.cpp's converter skips base_layer copies.
_FULL_KEY = re.compile(r"base_model\.model\.(.+?)(?:\.base_layer)?\.weight")
# Config fields that change what the adapter computes beyond A and B; each names the fix.
_REFUSED_FLAGS: dict[str, str] = {
    "use_dora": "DoRA magnitude vectors have no llama.cpp equivalent; train with use_dora=False",
    "lora_bias": "LoRA B biases have no llama.cpp equivalent; train with lora_bias=False",
    "use_qalora": "QA-LoRA pooling has no llama.cpp equivalent",
    "fan_in_fan_out": "fan_in_fan_out (Conv1D weights) does not apply to Qwen2",
    "modules_to_save": "modules_to_save makes full weight copies that llama.cpp and vLLM refuse; train LoRA only",
    "trainable_token_indices": "trainable tokens (added or retrained embeddings) cannot be expressed "
    "as a LoRA; keep the base vocabulary",
    "target_parameters": "LoRA on raw parameters (target_parameters) is not converted",
    "layer_replication": "layer replication changes the model's depth; llama.cpp cannot follow",
    "alora_invocation_tokens": "activated LoRA (aLoRA) is not converted",
}


class LoraConversionError(ValueError):
    """The adapter cannot be expressed as a llama.cpp GGUF LoRA; the message says why."""


@dataclass(frozen=True)
class LoraGGUF:
    """What was written: the file, the alpha stored in it, and what the adapter targets."""

    path: Path
    rank: int
    alpha: float  # adapter.lora.alpha as written (rsLoRA folded in)
    target_modules: tuple[str, ...]  # short names, e.g. ("q_proj", "v_proj")
    n_tensors: int
    folded: tuple[str, ...]  # "rslora", "rank_pattern", "alpha_pattern" when scales were folded


@dataclass(frozen=True)
class _Pair:
    module: str  # transformers module name, e.g. model.layers.0.self_attn.q_proj
    a: npt.NDArray[np.float32]  # r x in
    b: npt.NDArray[np.float32]  # out x r


def convert_lora(peft_dir: Path, base_dir: Path, out: Path, outtype: OutType = OutType.F32) -> LoraGGUF:
    """Write `out` from the PEFT adapter in `peft_dir` trained on `base_dir`; atomic (temp + rename)."""
    config = read_json(peft_dir / ADAPTER_CONFIG)
    base_config = read_json(base_dir / "config.json")
    check_convertible(config, base_config, peft_dir, base_dir)
    pairs = _read_pairs(peft_dir / ADAPTER_WEIGHTS, base_dir)
    _check_shapes(pairs, base_dir, base_config)
    alpha = file_alpha(config)
    folded = _fold_scales(pairs, config, alpha)
    arch = ARCHES[str(base_config["model_type"])]
    if arch == "llama":
        pairs = [_llama_rows(pair, base_config) for pair in pairs]
    _write(out, pairs, alpha, outtype, base_dir, arch)
    return LoraGGUF(
        path=out,
        rank=int(config["r"]),
        alpha=alpha,
        target_modules=tuple(sorted({p.module.rpartition(".")[2] for p in pairs})),
        n_tensors=2 * len(pairs),
        folded=folded,
    )


# --- what can be converted ------------------------------------------------------------------


def check_convertible(config: dict[str, Any], base_config: dict[str, Any], peft_dir: Path, base_dir: Path) -> None:
    if config.get("peft_type") != "LORA":
        raise LoraConversionError(f"only LoRA adapters convert, got peft_type={config.get('peft_type')!r}")
    for flag, why in _REFUSED_FLAGS.items():
        if config.get(flag):
            raise LoraConversionError(f"{flag}={config[flag]!r}: {why}")
    if config.get("bias", "none") != "none":
        raise LoraConversionError(
            f"bias={config['bias']!r} trains base biases, which a LoRA file cannot carry; use bias='none'"
        )
    if base_config.get("model_type") not in ARCHES:
        got = base_config.get("model_type")
        raise LoraConversionError(f"only {', '.join(ARCHES)} bases are supported, got {got!r}")
    if float(config.get("lora_alpha", 0)) == 0:
        # llama.cpp reads alpha 0 as "no alpha" (scale 1), while PEFT's output would be unchanged.
        raise LoraConversionError("lora_alpha=0 makes the adapter a no-op; nothing to convert")
    _check_vocabulary(peft_dir, base_dir)


def _check_vocabulary(peft_dir: Path, base_dir: Path) -> None:
    """A tokenizer saved with the adapter that is larger than the base's means added tokens."""
    if (peft_dir / "added_tokens.json").is_file():
        raise LoraConversionError(
            "the adapter adds tokens (added_tokens.json); llama.cpp cannot extend the base vocabulary"
        )
    adapter_tok, base_tok = peft_dir / "tokenizer.json", base_dir / "tokenizer.json"
    if adapter_tok.is_file() and base_tok.is_file() and _vocab_size(adapter_tok) > _vocab_size(base_tok):
        raise LoraConversionError(
            "the adapter's tokenizer has more tokens than the base's; llama.cpp cannot extend the base vocabulary"
        )


def _vocab_size(tokenizer_json: Path) -> int:
    tok = read_json(tokenizer_json)
    ids = set(tok["model"]["vocab"].values()) | {int(t["id"]) for t in tok.get("added_tokens", [])}
    return len(ids)


def _read_pairs(weights: Path, base_dir: Path) -> list[_Pair]:
    halves: dict[str, dict[str, npt.NDArray[np.float32]]] = {}
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
            match = _PEFT_KEY.fullmatch(key)
            if match is None:
                _check_base_copy(key, handle.get_tensor(key).float().numpy(), base_dir)
                continue
            module, half = match.groups()
            if module.endswith("embed_tokens"):
                raise LoraConversionError(_unexpected_tensor(key))
            # torch reads bf16, which numpy cannot represent.
            halves.setdefault(module, {})[half] = handle.get_tensor(key).float().numpy()
    pairs = []
    for module, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            raise LoraConversionError(f"{module} has lora_{''.join(ab)} only; the adapter file is incomplete")
        pairs.append(_Pair(module, ab["A"], ab["B"]))
    if not pairs:
        raise LoraConversionError(f"{weights} holds no LoRA tensors")
    return pairs


def _check_base_copy(key: str, array: npt.NDArray[np.float32], base_dir: Path) -> None:
    """A full weight in the adapter is harmless only if it is the base's own, unchanged."""
    match = _FULL_KEY.fullmatch(key)
    base = _base_tensor(base_dir, f"{match.group(1)}.weight") if match else None
    if base is None or base.shape != array.shape or not np.array_equal(base, array):
        raise LoraConversionError(_unexpected_tensor(key))


def _base_tensor(base_dir: Path, name: str) -> npt.NDArray[np.float32] | None:
    for file in _weight_files(base_dir):
        with safe_open(str(base_dir / file), framework="pt") as handle:
            if name in handle.keys():  # noqa: SIM118
                return handle.get_tensor(name).float().numpy()  # type: ignore[no-any-return]
    return None


def _unexpected_tensor(key: str) -> str:
    if "embed" in key or "lm_head.weight" in key or "modules_to_save" in key:
        return (
            f"{key}: embeddings or full module copies in the adapter (added tokens, modules_to_save, "
            "embedding targets) cannot be expressed as a llama.cpp LoRA; train LoRA on linear layers only"
        )
    return f"{key}: not a LoRA A/B weight (only lora_A.weight / lora_B.weight are converted)"


def _check_shapes(pairs: list[_Pair], base_dir: Path, base_config: dict[str, Any]) -> None:
    """Each B @ A must have its base weight's shape: catches an adapter for another base early."""
    shapes = _base_shapes(base_dir)
    for pair in pairs:
        weight = f"{pair.module}.weight"
        if weight == "lm_head.weight" and base_config.get("tie_word_embeddings", False):
            raise LoraConversionError(
                "lm_head is tied to the embeddings in this base; llama.cpp has no output tensor to adapt"
            )
        if weight not in shapes:
            raise LoraConversionError(f"{pair.module} is not a weight of the base model (wrong base?)")
        rank = pair.a.shape[0]
        got = (pair.b.shape[0], pair.a.shape[1])
        if pair.b.shape[1] != rank or got != shapes[weight]:
            raise LoraConversionError(
                f"{pair.module}: LoRA B{tuple(pair.b.shape)} @ A{tuple(pair.a.shape)} does not fit the base "
                f"weight {shapes[weight]} (wrong base model?)"
            )


def _weight_files(base_dir: Path) -> list[str]:
    index = base_dir / "model.safetensors.index.json"
    return sorted(set(read_json(index)["weight_map"].values())) if index.is_file() else ["model.safetensors"]


def _base_shapes(base_dir: Path) -> dict[str, tuple[int, int]]:
    shapes: dict[str, tuple[int, int]] = {}
    for file in _weight_files(base_dir):
        with safe_open(str(base_dir / file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118
                shape = handle.get_slice(name).get_shape()
                if len(shape) == 2:
                    shapes[name] = (int(shape[0]), int(shape[1]))
    return shapes


# --- scaling ---------------------------------------------------------------------------------


def peft_scale(rank: int, alpha: float, use_rslora: bool) -> float:
    """The factor PEFT multiplies B @ A by (peft/tuners/lora/layer.py update_layer)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def file_alpha(config: dict[str, Any]) -> float:
    """adapter.lora.alpha such that llama.cpp's alpha / r equals PEFT's default-module scale."""
    rank = int(config["r"])
    return peft_scale(rank, float(config["lora_alpha"]), bool(config.get("use_rslora"))) * rank


def _fold_scales(pairs: list[_Pair], config: dict[str, Any], alpha: float) -> tuple[str, ...]:
    """Scale each B so that llama.cpp's alpha / r_m equals PEFT's scale for that module."""
    from peft.utils.other import get_pattern_key

    rank_pattern: dict[str, int] = config.get("rank_pattern") or {}
    alpha_pattern: dict[str, float] = config.get("alpha_pattern") or {}
    rslora = bool(config.get("use_rslora"))
    for i, pair in enumerate(pairs):
        rank = int(rank_pattern.get(get_pattern_key(list(rank_pattern), pair.module), config["r"]))
        module_alpha = float(alpha_pattern.get(get_pattern_key(list(alpha_pattern), pair.module), config["lora_alpha"]))
        if rank != pair.a.shape[0]:
            raise LoraConversionError(f"{pair.module}: rank {pair.a.shape[0]} in the weights, {rank} in the config")
        factor = peft_scale(rank, module_alpha, rslora) * rank / alpha
        if not math.isclose(factor, 1.0, rel_tol=1e-12):
            pairs[i] = _Pair(pair.module, pair.a, (pair.b * factor).astype(np.float32))
    used = {"rslora": rslora, "rank_pattern": bool(rank_pattern), "alpha_pattern": bool(alpha_pattern)}
    return tuple(name for name, on in used.items() if on)


def permute_rows(rows: npt.NDArray[np.float32], n_head: int) -> npt.NDArray[np.float32]:
    """llama.cpp's order of a llama q/k projection's output rows (convert_hf_to_gguf's `permute`),
    from the transformers order: within each head, the two rotary halves interleaved."""
    shape = rows.shape
    return rows.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _llama_rows(pair: _Pair, base_config: dict[str, Any]) -> _Pair:
    """B @ A with its rows permuted is (B with its rows permuted) @ A: only B moves."""
    kind = pair.module.rpartition(".")[2]
    heads = {
        "q_proj": base_config["num_attention_heads"],
        "k_proj": base_config.get("num_key_value_heads") or base_config["num_attention_heads"],
    }
    if kind not in heads:
        return pair
    return _Pair(pair.module, pair.a, np.ascontiguousarray(permute_rows(pair.b, int(heads[kind]))))


# --- writing ---------------------------------------------------------------------------------


def _write(out: Path, pairs: list[_Pair], alpha: float, outtype: OutType, base_dir: Path, arch: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    writer = gguf.GGUFWriter(tmp, arch=arch)
    try:
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_name(f"{base_dir.resolve().name} LoRA")
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        dtype = np.float32 if outtype is OutType.F32 else np.float16
        for name, array in _tensors(pairs):
            writer.add_tensor(name, array.astype(dtype))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)


def _tensors(pairs: list[_Pair]) -> Iterator[tuple[str, npt.NDArray[np.float32]]]:
    # numpy (rows, cols) becomes GGUF ne (cols, rows): A (r, in) -> ne [in, r] and B (out, r) ->
    # ne [r, out], the layout llama_adapter_lora_init checks against the base weight, untransposed.
    for pair in pairs:
        base = gguf_tensor_name(f"{pair.module}.weight")
        if base is None:
            raise LoraConversionError(f"{pair.module} has no llama.cpp tensor")
        yield f"{base}.lora_a", np.ascontiguousarray(pair.a)
        yield f"{base}.lora_b", np.ascontiguousarray(pair.b)


def read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise LoraConversionError(f"{path} is not a JSON object")
    return data
