"""Helpers for LoRA tests: a PEFT adapter on the tiny model with random, non-zero weights
(a fresh LoRA has B = 0, which would let any test pass with the adapter ignored)."""

from __future__ import annotations

from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from training.demo.tiny import TinyModel

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PEFT_WARNINGS = [
    # transformers 5 deprecates the attribute PEFT 0.21 still reads when wrapping a model.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    # PEFT saves a copy of an adapted lm_head; the converter checks that copy against the base.
    pytest.mark.filterwarnings("ignore:Setting `save_embedding_layers` to `True`:UserWarning"),
]


def make_peft_adapter(tiny: TinyModel, config: LoraConfig, out: Path, seed: int = 0) -> Path:
    """Save a PEFT adapter on the tiny model with every trainable weight seeded random."""
    base = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32)
    model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(str(out))
    return out


def parity_llama(gguf: Path, lora: Path | None = None) -> llama_cpp.Llama:
    """llama.cpp set up for comparing logits with transformers' fp32 forward."""
    return llama_cpp.Llama(
        model_path=str(gguf),
        lora_path=str(lora) if lora is not None else None,
        n_ctx=512,
        n_batch=512,
        n_threads=2,
        logits_all=True,
        # F32 KV cache and no flash attention: llama.cpp's F16 defaults would round keys and
        # values and blur the comparison.
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        flash_attn=False,
        verbose=False,
    )


def llama_logits(gguf: Path, lora: Path | None, ids: list[int]) -> npt.NDArray[np.float32]:
    """llama.cpp's logits at every position of `ids`, the base GGUF with `lora` applied."""
    llama = parity_llama(gguf, lora)
    try:
        llama.eval(ids)
        return np.asarray(llama.scores[: len(ids)], dtype=np.float32).copy()
    finally:
        llama.close()
