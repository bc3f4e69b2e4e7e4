"""The random-weight tiny model that tests serve: a seeded Qwen2ForCausalLM and its tokenizer.

`build_tiny` writes a transformers folder (weights, config, tokenizer with callgate's Hermes
chat template) and its GGUF export beside it, in a few seconds on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from training.demo.tokenizer import (
    DEFAULT_VOCAB_SIZE,
    ENDOFTEXT,
    IM_END,
    save_tokenizer,
    train_tokenizer,
)
from training.export.gguf_model import OutType, export_gguf

TEMPLATE_PATH = Path(__file__).resolve().parents[1] / "templates" / "hermes.jinja"
GGUF_NAME = "model.gguf"


@dataclass(frozen=True)
class TinySpec:
    """Shape and seed of the tiny model; the defaults are what tests use."""

    seed: int = 0
    vocab_size: int = DEFAULT_VOCAB_SIZE
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 192
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    # Far above the usual 0.02 so logits spread over several units: a parity check between
    # engines then compares real numbers, not values that are all close to zero.
    initializer_range: float = 0.2
    # Norm weights and biases made random too (see _randomize_vectors); off for models that train.
    perturb_vectors: bool = True


@dataclass(frozen=True)
class TinyModel:
    """Where a built tiny model lives: `hf_dir` (transformers files) and its `gguf`."""

    dir: Path
    hf_dir: Path
    gguf: Path
    n_params: int
    vocab_size: int


def build_tiny(out: Path, spec: TinySpec = TinySpec(), outtype: OutType = OutType.F32) -> TinyModel:
    """Train the tokenizer, make the seeded model, save both to `out`, export `out/model.gguf`."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(spec.vocab_size, spec.seed)
    save_tokenizer(tokenizer, out, TEMPLATE_PATH.read_text(encoding="utf-8"))
    vocab_size = tokenizer.get_vocab_size()
    model = make_model(spec, vocab_size, token_id(tokenizer, IM_END), token_id(tokenizer, ENDOFTEXT))
    model.save_pretrained(out)
    gguf_path = export_gguf(out, out / GGUF_NAME, outtype)
    n_params = sum(p.numel() for p in model.parameters())
    return TinyModel(dir=out, hf_dir=out, gguf=gguf_path, n_params=n_params, vocab_size=vocab_size)


def make_model(spec: TinySpec, vocab_size: int, eos_id: int, pad_id: int) -> Qwen2ForCausalLM:
    """A Qwen2ForCausalLM with seeded random weights, the global torch RNG left untouched."""
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": spec.rope_theta},
        initializer_range=spec.initializer_range,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        sliding_window=None,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = Qwen2ForCausalLM(config)
        if spec.perturb_vectors:
            _randomize_vectors(model, spec.initializer_range)
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id
    )
    model.train(False)
    return model


def token_id(tokenizer: Tokenizer, token: str) -> int:
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"{token!r} is not in the vocabulary")
    return token_id


@torch.no_grad()
def _randomize_vectors(model: Qwen2ForCausalLM, scale: float) -> None:
    # Default init sets norm weights to 1 and biases to 0, which would let an exporter that
    # drops or misnames them pass the parity test; perturb them so each one matters.
    for name, param in model.named_parameters():
        if param.ndim != 1:
            continue
        if name.endswith("norm.weight"):
            param.copy_(1.0 + scale * torch.randn_like(param))
        else:
            param.copy_(scale * torch.randn_like(param))
