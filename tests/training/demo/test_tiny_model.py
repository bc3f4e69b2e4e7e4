"""The tiny model as llama.cpp serves it matches transformers: same token ids, same logits.

Covers the exporter end to end (training/export/gguf_model.py) on the random-weight tiny model:
tokenizer parity on varied text, logit parity on a rendered chat, and the GGUF metadata.
"""

from __future__ import annotations

import json
import shutil
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import llama_cpp
import numpy as np
import numpy.typing as npt
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from tests.support.lora_helpers import parity_llama
from training.demo.tiny import TEMPLATE_PATH, TinyModel
from training.demo.tokenizer import IM_END, SPECIAL_TOKENS
from training.export.gguf_model import OutType, export_gguf, read_vocab

PARITY_TEXTS: tuple[str, ...] = (
    "Hello, world!",
    "What's the weather like in Paris tomorrow?",
    "I'LL SEE YOU'RE RIGHT, it's done; they'd've known.",
    "order 12345",
    "Order #A-0099887 shipped on 2024-03-15 at 09:41:07.",
    "3.14159 + 2.71828 = 5.85987; 1e-10, -42, +7, 0x1F, 1_000_000",
    "0123456789",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    '{"text": "she said \\"hi\\"\\n\\ttab", "path": "C:\\\\Users\\\\me", "ok": true, "n": null}',
    '[{"id":1,"tags":["a","b"]},{"id":2,"nested":{"deep":[1,2,[3,4]]}}]',
    "naïve café résumé — Zürich, São Paulo, Kraków",
    "東京の天気は？ 北京今天天气怎么样？ 서울 날씨",
    "Привет, мир! Γειά σου κόσμε. مرحبا بالعالم שלום",
    "emoji: 🙂👍🚀🎉 ❤️ 👩‍👩‍👧‍👦 🇫🇷 and 😂😂😂",
    "Arabic-Indic digits ١٢٣٤ and fullwidth １２３ and ½ ² ⅷ",
    "line one\nline two\r\nline three\n\n\nend",
    "\ttabbed\t\tcolumns\t",
    "multiple    spaces   between     words ",
    "   leading and trailing spaces   ",
    "non\u00a0breaking\u2009thin\u3000ideographic spaces",
    "<|im_start|>user\nhi<|im_end|>",
    '<|im_start|>assistant\n<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call><|im_end|>\n',
    '<tool_response>\n{"temp": 21}\n</tool_response>',
    "<think>\nplan: call f(1)\n</think>\nanswer<|endoftext|>",
    "text<|im_end|>glued<tool_call>to</tool_call>specials",
    "almost special: <|im_start |> <tool_call <|im_end|",
    "punctuation!!! ??? ... ,,, ;;; ::: --- ___ *** ### @@@ $$$ %%% ^^^ &&& ((( )))",
    "mixed: ab12cd34 x9y8z7 v1.2.3 user_id=42&limit=10",
    "code: def f(x):\n    return x ** 2  # square\n",
    "",
    " ",
)
# Text that NFC changes: transformers normalizes it (as Qwen2 does), llama.cpp does not.
DECOMPOSED_TEXT = "cafe\u0301 and n\u0303 and A\u030a"

CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Where is order 12345? Also, weather in Zürich?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"function": {"name": "get_order_status", "arguments": {"order_id": "12345"}}},
            {"function": {"name": "get_weather", "arguments": '{"city": "Zürich"}'}},
        ],
    },
    {"role": "tool", "content": '{"status": "shipped"}'},
    {"role": "tool", "content": '{"temp_c": 7}'},
]
TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Look up {arg}.",
            "parameters": {
                "type": "object",
                "properties": {arg: {"type": "string"}},
                "required": [arg],
            },
        },
    }
    for name, arg in (("get_order_status", "order_id"), ("get_weather", "city"))
]
LOGIT_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def llama(tiny_model: TinyModel) -> Iterator[llama_cpp.Llama]:
    model = parity_llama(tiny_model.gguf)
    yield model
    model.close()


@pytest.fixture(scope="module")
def auto_tokenizer(tiny_model: TinyModel) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model.hf_dir)


@pytest.fixture(scope="module")
def file_tokenizer(tiny_model: TinyModel) -> PreTrainedTokenizerFast:
    """tokenizer.json exactly as written, whatever class AutoTokenizer would pick."""
    tokenizer: PreTrainedTokenizerFast = PreTrainedTokenizerFast.from_pretrained(tiny_model.hf_dir)
    return tokenizer


@pytest.fixture(scope="module")
def prompt_ids(auto_tokenizer: Any) -> list[int]:
    prompt = auto_tokenizer.apply_chat_template(CONVERSATION, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    ids: list[int] = auto_tokenizer.encode(prompt, add_special_tokens=False)
    return ids


def _llama_ids(llama: llama_cpp.Llama, text: str) -> list[int]:
    return llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)


def _llama_logits(model: llama_cpp.Llama, ids: list[int]) -> npt.NDArray[np.float32]:
    model.reset()  # type: ignore[no-untyped-call]
    model.eval(ids)
    return np.asarray(model.scores[: len(ids)], dtype=np.float32)


def _hf_logits(hf_dir: Path, ids: list[int]) -> npt.NDArray[np.float32]:
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.train(False)
    with torch.no_grad():
        logits: npt.NDArray[np.float32] = model(torch.tensor([ids])).logits[0].numpy()
    return logits


# --- tokenizer parity ----------------------------------------------------------------------


@pytest.mark.parametrize("text", PARITY_TEXTS, ids=range(len(PARITY_TEXTS)))
def test_token_ids_match_llama_cpp(
    text: str, auto_tokenizer: Any, file_tokenizer: PreTrainedTokenizerFast, llama: llama_cpp.Llama
) -> None:
    expected = _llama_ids(llama, text)
    assert auto_tokenizer.encode(text, add_special_tokens=False) == expected
    assert file_tokenizer.encode(text, add_special_tokens=False) == expected


def test_llama_cpp_matches_on_nfc_text(auto_tokenizer: Any, llama: llama_cpp.Llama) -> None:
    nfc = unicodedata.normalize("NFC", DECOMPOSED_TEXT)
    hf_ids = auto_tokenizer.encode(DECOMPOSED_TEXT, add_special_tokens=False)
    assert hf_ids == _llama_ids(llama, nfc)


def test_every_digit_is_its_own_token(file_tokenizer: PreTrainedTokenizerFast, llama: llama_cpp.Llama) -> None:
    # Byte-level BPE spells ASCII digits as themselves, so any merged digit would show here.
    with_digits = [t for t in file_tokenizer.get_vocab() if any(c in "0123456789" for c in t)]
    assert sorted(with_digits) == list("0123456789")
    ids = _llama_ids(llama, "order 1234567890")
    assert [llama.detokenize([i]) for i in ids[-10:]] == [d.encode() for d in "1234567890"]


def test_special_tokens_are_single_control_tokens(tiny_model: TinyModel, llama: llama_cpp.Llama) -> None:
    vocab = read_vocab(tiny_model.hf_dir, n_vocab=llama.n_vocab())
    for token in SPECIAL_TOKENS:
        (token_id,) = _llama_ids(llama, token)
        assert vocab.tokens[token_id] == token
        assert vocab.token_types[token_id] == gguf.TokenType.CONTROL


# --- logit parity --------------------------------------------------------------------------


def test_chat_prompt_tokenizes_the_same(prompt_ids: list[int], auto_tokenizer: Any) -> None:
    prompt = auto_tokenizer.decode(prompt_ids)
    assert "<tool_call>" in prompt and "<tool_response>" in prompt
    assert 100 < len(prompt_ids) < 512


def test_logits_match_transformers(
    tiny_model: TinyModel,
    prompt_ids: list[int],
    file_tokenizer: PreTrainedTokenizerFast,
    llama: llama_cpp.Llama,
) -> None:
    prompt = file_tokenizer.decode(prompt_ids)
    assert isinstance(prompt, str)
    assert _llama_ids(llama, prompt) == prompt_ids
    expected = _hf_logits(tiny_model.hf_dir, prompt_ids)
    got = _llama_logits(llama, prompt_ids)
    assert float(expected.std()) > 0.5, "random logits too flat for a meaningful comparison"
    assert float(np.abs(got[-1] - expected[-1]).max()) < LOGIT_TOLERANCE
    assert float(np.abs(got - expected).max()) < LOGIT_TOLERANCE
    assert int(got[-1].argmax()) == int(expected[-1].argmax())


def test_f16_export_stays_close(
    tiny_model: TinyModel, prompt_ids: list[int], tmp_path: Path, llama: llama_cpp.Llama
) -> None:
    path = export_gguf(tiny_model.hf_dir, tmp_path / "model-f16.gguf", OutType.F16)
    assert path.stat().st_size < tiny_model.gguf.stat().st_size * 0.6
    f16 = parity_llama(path)
    try:
        got = _llama_logits(f16, prompt_ids)
    finally:
        f16.close()
    # Half-precision weights: close to the F32 export, not equal to it.
    assert float(np.abs(got - _llama_logits(llama, prompt_ids)).max()) < 0.1


# --- metadata ------------------------------------------------------------------------------


def test_gguf_carries_template_and_eos(tiny_model: TinyModel, llama: llama_cpp.Llama) -> None:
    template = TEMPLATE_PATH.read_text(encoding="utf-8")
    reader = gguf.GGUFReader(tiny_model.gguf)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    eos_id = reader.fields["tokenizer.ggml.eos_token_id"].contents()
    assert reader.fields["tokenizer.chat_template"].contents() == template
    assert reader.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert tokens[eos_id] == IM_END
    assert llama.metadata["tokenizer.chat_template"] == template
    assert llama.metadata["tokenizer.ggml.eos_token_id"] == str(eos_id)
    assert llama.token_eos() == eos_id
    assert llama.metadata["tokenizer.ggml.add_bos_token"] == "false"


def test_exporter_refuses_a_pre_tokenizer_llama_cpp_would_not_match(tiny_model: TinyModel, tmp_path: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model.hf_dir / name, tmp_path / name)
    tok = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    # GPT-2's regex groups digits (` ?\p{N}+`): labelling it "qwen2" would split them apart.
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = (
        r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
    )
    (tmp_path / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    with pytest.raises(ValueError, match="pre-tokenizer"):
        read_vocab(tmp_path, n_vocab=tiny_model.vocab_size)
