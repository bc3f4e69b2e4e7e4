"""The GGUF LoRA converter (training/export/gguf_lora.py): llama.cpp with the base GGUF plus the
converted adapter gives the logits transformers gives with the base plus the PEFT adapter.

The adapters have random, non-zero B matrices (a fresh LoRA has B = 0 and would pass with the
adapter ignored); each parity case also checks that the adapter moves the logits far more
than the tolerance. Cases cover plain LoRA, rsLoRA with lm_head, and rank/alpha patterns.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.lora_helpers import ALL_LINEAR, PEFT_WARNINGS, llama_logits, make_peft_adapter
from training.demo.tiny import TinyModel, TinySpec, make_model
from training.export.gguf_lora import LoraConversionError, convert_lora
from training.export.gguf_model import OutType

pytestmark = PEFT_WARNINGS

LOGIT_TOLERANCE = 1e-3
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Where is order 12345? And the weather in Zürich?"},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "description": "Look up an order.",
            "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
        },
    }
]


def hf_logits(tiny: TinyModel, adapter: Path | None, ids: list[int]) -> npt.NDArray[np.float32]:
    model: Any = AutoModelForCausalLM.from_pretrained(tiny.hf_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.train(False)
    with torch.no_grad():
        logits: npt.NDArray[np.float32] = model(torch.tensor([ids])).logits[0].numpy()
    return logits


@pytest.fixture(scope="module")
def prompt_ids(tiny_model: TinyModel) -> list[int]:
    tokenizer: Any = AutoTokenizer.from_pretrained(tiny_model.hf_dir)
    text = tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


@pytest.fixture(scope="module")
def base_logits(tiny_model: TinyModel, prompt_ids: list[int]) -> Iterator[npt.NDArray[np.float32]]:
    yield hf_logits(tiny_model, None, prompt_ids)


PARITY_CASES = {
    "r8-all-linear": LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR),
    "r16-rslora-lm_head": LoraConfig(r=16, lora_alpha=8, use_rslora=True, target_modules=[*ALL_LINEAR, "lm_head"]),
    "rank-alpha-patterns": LoraConfig(
        r=8,
        lora_alpha=16,
        target_modules=ALL_LINEAR,
        rank_pattern={"down_proj": 4, "model.layers.1.self_attn.q_proj": 16},
        alpha_pattern={"v_proj": 3},
    ),
}


@pytest.mark.parametrize("case", list(PARITY_CASES))
def test_llama_cpp_lora_matches_peft(
    case: str,
    tiny_model: TinyModel,
    prompt_ids: list[int],
    base_logits: npt.NDArray[np.float32],
    tmp_path: Path,
) -> None:
    adapter = make_peft_adapter(tiny_model, PARITY_CASES[case], tmp_path / "peft")
    converted = convert_lora(adapter, tiny_model.hf_dir, tmp_path / "adapter.gguf")
    expected = hf_logits(tiny_model, adapter, prompt_ids)
    got = llama_logits(tiny_model.gguf, converted.path, prompt_ids)
    assert got.shape == expected.shape == (len(prompt_ids), expected.shape[1])
    # The adapter must matter, or parity would hold with it ignored.
    assert float(np.abs(expected - base_logits).max()) > 0.5
    assert float(np.abs(got - expected).max()) < LOGIT_TOLERANCE


def test_llama_cpp_base_without_adapter_is_unchanged(
    tiny_model: TinyModel, prompt_ids: list[int], base_logits: npt.NDArray[np.float32]
) -> None:
    # The reference side of the "adapter matters" check: base vs base agrees.
    assert float(np.abs(llama_logits(tiny_model.gguf, None, prompt_ids) - base_logits).max()) < LOGIT_TOLERANCE


def test_gguf_metadata_and_tensors(tiny_model: TinyModel, tmp_path: Path) -> None:
    adapter = make_peft_adapter(tiny_model, PARITY_CASES["r16-rslora-lm_head"], tmp_path / "peft")
    converted = convert_lora(adapter, tiny_model.hf_dir, tmp_path / "adapter.gguf")
    reader = gguf.GGUFReader(converted.path)
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["general.architecture"].contents() == "qwen2"
    assert reader.fields["adapter.type"].contents() == "lora"
    # rsLoRA folded: llama.cpp's alpha / r must equal PEFT's alpha / sqrt(r) = 8 / 4.
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8 * 4)
    assert converted.alpha == pytest.approx(32) and converted.folded == ("rslora",)
    tensors = {t.name: (tuple(int(n) for n in t.shape), t.tensor_type) for t in reader.tensors}
    assert len(tensors) == converted.n_tensors == 2 * (2 * 7 + 1)
    # GGUF ne order: A is (in, r), B is (r, out), as llama_adapter_lora_init checks.
    assert tensors["blk.0.attn_k.weight.lora_a"] == ((64, 16), gguf.GGMLQuantizationType.F32)
    assert tensors["blk.0.attn_k.weight.lora_b"] == ((16, 32), gguf.GGMLQuantizationType.F32)
    assert tensors["output.weight.lora_b"][0] == (16, tiny_model.vocab_size)
    assert converted.target_modules == tuple(sorted([*ALL_LINEAR, "lm_head"]))


def test_f16_output_is_half_the_size(tiny_model: TinyModel, tmp_path: Path) -> None:
    adapter = make_peft_adapter(tiny_model, PARITY_CASES["r8-all-linear"], tmp_path / "peft")
    f32 = convert_lora(adapter, tiny_model.hf_dir, tmp_path / "f32.gguf")
    f16 = convert_lora(adapter, tiny_model.hf_dir, tmp_path / "f16.gguf", OutType.F16)
    assert f16.path.stat().st_size < 0.6 * f32.path.stat().st_size
    types = {t.tensor_type for t in gguf.GGUFReader(f16.path).tensors}
    assert types == {gguf.GGMLQuantizationType.F16}


# --- refusals --------------------------------------------------------------------------------


def _edit_config(adapter: Path, **changes: Any) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(changes)
    path.write_text(json.dumps(config), encoding="utf-8")


@pytest.fixture(scope="module")
def plain_adapter(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain") / "peft"
    return make_peft_adapter(tiny_model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]), out)


def _copy(adapter: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(adapter, tmp_path / "copy"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
        ({"trainable_token_indices": [5, 6]}, "added or retrained embeddings"),
        ({"bias": "all"}, "bias='none'"),
        ({"peft_type": "IA3"}, "only LoRA"),
        ({"lora_alpha": 0}, "no-op"),
    ],
)
def test_refuses_what_llama_cpp_cannot_express(
    plain_adapter: Path, tiny_model: TinyModel, tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    adapter = _copy(plain_adapter, tmp_path)
    _edit_config(adapter, **changes)
    with pytest.raises(LoraConversionError, match=message):
        convert_lora(adapter, tiny_model.hf_dir, tmp_path / "adapter.gguf")
    assert not (tmp_path / "adapter.gguf").exists()


def test_refuses_saved_embeddings(tiny_model: TinyModel, tmp_path: Path) -> None:
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"], modules_to_save=["embed_tokens"])
    adapter = make_peft_adapter(tiny_model, config, tmp_path / "peft")
    _edit_config(adapter, modules_to_save=None)  # the weights alone must still be caught
    with pytest.raises(LoraConversionError, match="embeddings or full module copies"):
        convert_lora(adapter, tiny_model.hf_dir, tmp_path / "adapter.gguf")


def test_refuses_embedding_targets(tiny_model: TinyModel, tmp_path: Path) -> None:
    adapter = make_peft_adapter(tiny_model, LoraConfig(r=8, target_modules=["embed_tokens"]), tmp_path / "peft")
    with pytest.raises(LoraConversionError, match="embedding targets"):
        convert_lora(adapter, tiny_model.hf_dir, tmp_path / "adapter.gguf")


def test_refuses_lm_head_on_tied_base(tiny_model: TinyModel, tmp_path: Path) -> None:
    adapter = make_peft_adapter(tiny_model, LoraConfig(r=8, target_modules=["lm_head"]), tmp_path / "peft")
    base = Path(shutil.copytree(tiny_model.hf_dir, tmp_path / "base"))
    config = json.loads((base / "config.json").read_text(encoding="utf-8"))
    (base / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}), encoding="utf-8")
    with pytest.raises(LoraConversionError, match="tied"):
        convert_lora(adapter, base, tmp_path / "adapter.gguf")


def test_refuses_added_tokens(plain_adapter: Path, tiny_model: TinyModel, tmp_path: Path) -> None:
    adapter = _copy(plain_adapter, tmp_path)
    (adapter / "added_tokens.json").write_text('{"<new>": 9999}', encoding="utf-8")
    with pytest.raises(LoraConversionError, match="adds tokens"):
        convert_lora(adapter, tiny_model.hf_dir, tmp_path / "adapter.gguf")


def test_refuses_an_adapter_for_another_base(plain_adapter: Path, tiny_model: TinyModel, tmp_path: Path) -> None:
    other = make_model(TinySpec(hidden_size=32, intermediate_size=96), tiny_model.vocab_size, 0, 1)
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(LoraConversionError, match="wrong base model"):
        convert_lora(plain_adapter, tmp_path / "other", tmp_path / "adapter.gguf")
