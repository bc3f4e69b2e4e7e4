"""callgate's own Hugging Face (Qwen2) -> GGUF exporter, built on the `gguf` library.

Reads a transformers folder (config.json, safetensors, tokenizer.json, tokenizer_config.json)
and writes one GGUF file that llama.cpp loads: weights under llama.cpp's tensor names, the
hyperparameters, the byte-level BPE vocabulary with its pre-tokenizer name, and the chat template.
"""

from __future__ import annotations

import enum
import json
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

from training.demo.tokenizer import LLAMA_CPP_PRE, QWEN2_PRETOKENIZE_REGEX

ARCH = "qwen2"
T = gguf.MODEL_TENSOR

_GLOBAL_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "model.embed_tokens": T.TOKEN_EMBD,
    "model.norm": T.OUTPUT_NORM,
    "lm_head": T.OUTPUT,
}
_LAYER_TENSORS: dict[str, gguf.MODEL_TENSOR] = {
    "input_layernorm": T.ATTN_NORM,
    "self_attn.q_proj": T.ATTN_Q,
    "self_attn.k_proj": T.ATTN_K,
    "self_attn.v_proj": T.ATTN_V,
    "self_attn.o_proj": T.ATTN_OUT,
    "post_attention_layernorm": T.FFN_NORM,
    "mlp.gate_proj": T.FFN_GATE,
    "mlp.up_proj": T.FFN_UP,
    "mlp.down_proj": T.FFN_DOWN,
}
_LAYER_NAME = re.compile(r"model\.layers\.(\d+)\.(.+)")
# Buffers some checkpoints carry that llama.cpp recomputes itself.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class OutType(enum.Enum):
    """Storage type of the 2-D weight matrices; norms and biases always stay F32."""

    F32 = "f32"
    F16 = "f16"


@dataclass(frozen=True)
class HFVocab:
    """A tokenizer as GGUF stores it: one entry per id, merges as "left right" strings."""

    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int | None
    pad_id: int | None
    bos_id: int | None
    add_bos: bool
    chat_template: str | None


def export_gguf(hf_dir: Path, out: Path, outtype: OutType = OutType.F32) -> Path:
    """Convert `hf_dir` to `out`; the file appears only once complete (temp file + rename)."""
    config = _read_json(hf_dir / "config.json")
    _check_architecture(config)
    vocab = read_vocab(hf_dir, n_vocab=int(config["vocab_size"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    # Same folder, so the final rename is atomic; a unique name, so concurrent exports don't clash.
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex}.tmp")
    writer = gguf.GGUFWriter(tmp, arch=ARCH)
    try:
        writer.add_name(hf_dir.resolve().name)
        _add_hparams(writer, config, outtype)
        _add_vocab(writer, vocab)
        for name, array in _gguf_tensors(hf_dir, config, outtype):
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out


# --- hyperparameters -----------------------------------------------------------------------


def _check_architecture(config: dict[str, Any]) -> None:
    if config.get("model_type") != "qwen2":
        raise ValueError(f"only Qwen2 models are supported, got model_type={config.get('model_type')!r}")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise NotImplementedError(f"rope scaling {rope_type!r} is not exported")


def _rope_theta(config: dict[str, Any]) -> float:
    # transformers 5 nests it under rope_parameters; older configs keep it at the top level.
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _add_hparams(writer: gguf.GGUFWriter, config: dict[str, Any], outtype: OutType) -> None:
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    file_type = gguf.LlamaFileType.ALL_F32 if outtype is OutType.F32 else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(file_type)


# --- tokenizer -----------------------------------------------------------------------------


def read_vocab(hf_dir: Path, n_vocab: int) -> HFVocab:
    """The GGUF view of a byte-level BPE tokenizer.json; refuses a pre-tokenizer llama.cpp lacks."""
    tok = _read_json(hf_dir / "tokenizer.json")
    tok_config = _read_json(hf_dir / "tokenizer_config.json")
    model = tok["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"only BPE tokenizers are supported, got {model.get('type')!r}")
    _check_pre_tokenizer(tok)
    by_id: dict[int, str] = {int(i): t for t, i in model["vocab"].items()}
    types: dict[int, int] = {}
    for added in tok.get("added_tokens", []):
        by_id[int(added["id"])] = added["content"]
        # llama.cpp only splits CONTROL and USER_DEFINED tokens out of raw text, as HF does.
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        types[int(added["id"])] = int(kind)
    size = max(n_vocab, max(by_id) + 1)
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(size)]
    token_types = [
        types.get(i, int(gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)) for i in range(size)
    ]
    ids = {t: i for i, t in enumerate(tokens)}
    return HFVocab(
        tokens=tokens,
        token_types=token_types,
        merges=[m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])],
        eos_id=_token_id(tok_config.get("eos_token"), ids),
        pad_id=_token_id(tok_config.get("pad_token"), ids),
        bos_id=_token_id(tok_config.get("bos_token"), ids),
        add_bos=bool(tok_config.get("add_bos_token", False)),
        chat_template=_chat_template(hf_dir, tok_config),
    )


def _check_pre_tokenizer(tok: dict[str, Any]) -> None:
    """Refuse a tokenizer.json that llama.cpp's "qwen2" pre-tokenizer would not reproduce."""
    pre = tok.get("pre_tokenizer") or {}
    steps: list[dict[str, Any]] = pre.get("pretokenizers", [pre])
    regexes = [s.get("pattern", {}).get("Regex") for s in steps if s.get("type") == "Split"]
    byte_levels = [s for s in steps if s.get("type") == "ByteLevel"]
    if regexes != [QWEN2_PRETOKENIZE_REGEX] or len(byte_levels) != 1 or byte_levels[0].get("use_regex"):
        # A wrong label would load fine and tokenize differently; refuse instead.
        raise ValueError(
            "tokenizer.json pre-tokenizer is not Qwen2's Split regex + ByteLevel(use_regex=False); "
            "llama.cpp would split text differently"
        )
    normalizer = tok.get("normalizer")
    # llama.cpp applies no normalizer; NFC is tolerated (as for Qwen2 itself) because NFC text,
    # which callers must send, is unchanged by it. Anything else would silently be dropped.
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ValueError(f"normalizer {normalizer.get('type')!r} has no llama.cpp equivalent")


def _token_id(token: str | dict[str, Any] | None, ids: dict[str, int]) -> int | None:
    if token is None:
        return None
    content = token if isinstance(token, str) else str(token["content"])
    return ids[content]


def _chat_template(hf_dir: Path, tok_config: dict[str, Any]) -> str | None:
    # transformers 5's save_pretrained writes the template to its own file.
    template_file = hf_dir / "chat_template.jinja"
    if template_file.is_file():
        return template_file.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    return template if isinstance(template, str) else None


def _add_vocab(writer: gguf.GGUFWriter, vocab: HFVocab) -> None:
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(LLAMA_CPP_PRE)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.token_types)
    writer.add_token_merges(vocab.merges)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    writer.add_add_bos_token(vocab.add_bos)
    if vocab.chat_template is not None:
        writer.add_chat_template(vocab.chat_template)


# --- tensors -------------------------------------------------------------------------------


def _gguf_tensors(hf_dir: Path, config: dict[str, Any], outtype: OutType) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    seen: set[str] = set()
    for hf_name, array in _hf_tensors(hf_dir):
        name = gguf_tensor_name(hf_name)
        if name is None:
            continue
        seen.add(name)
        keep_f32 = array.ndim < 2 or outtype is OutType.F32
        yield name, array.astype(np.float32 if keep_f32 else np.float16)
    if "output.weight" not in seen and not config.get("tie_word_embeddings", False):
        raise ValueError("lm_head.weight is missing and embeddings are not tied")


def gguf_tensor_name(hf_name: str) -> str | None:
    """llama.cpp's name for a transformers Qwen2 tensor, None for buffers it does not need."""
    stem, _, kind = hf_name.rpartition(".")
    if stem.endswith(_IGNORED_SUFFIXES):
        return None
    if stem in _GLOBAL_TENSORS:
        return f"{gguf.TENSOR_NAMES[_GLOBAL_TENSORS[stem]]}.{kind}"
    match = _LAYER_NAME.fullmatch(stem)
    if match is None or match.group(2) not in _LAYER_TENSORS:
        raise ValueError(f"unexpected tensor {hf_name!r} for a Qwen2 model")
    template = gguf.TENSOR_NAMES[_LAYER_TENSORS[match.group(2)]]
    return f"{template.format(bid=int(match.group(1)))}.{kind}"


def _hf_tensors(hf_dir: Path) -> Iterator[tuple[str, npt.NDArray[Any]]]:
    index = hf_dir / "model.safetensors.index.json"
    files = sorted(set(_read_json(index)["weight_map"].values())) if index.is_file() else ["model.safetensors"]
    for file in files:
        # torch reads bf16 checkpoints, which numpy cannot represent.
        with safe_open(str(hf_dir / file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                yield name, handle.get_tensor(name).float().numpy()


def _read_json(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise TypeError(f"{path} is not a JSON object")
    return data
