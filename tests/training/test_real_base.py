"""Training on a real base (issue #17): `--base-model` takes a GGUF file or a catalogue name
(training/bases.py dequantizes it into a cached transformers folder), and a LoRA trained on the
dequantized weights, converted by training/export/gguf_lora.py, applies to the quantized GGUF in
llama.cpp with the logits PEFT gives, up to what quantization alone costs.

Logit parity: transformers runs the dequantized float weights; llama.cpp runs the Q4 file with
quantized activations in its dot products. The base-vs-base gap is that cost; the adapter's gap
(PEFT on the dequantized base vs GGUF LoRA on the quantized base) may not exceed it by more than
PARITY_FACTOR, while the adapter itself moves the logits far more than either gap. SmolLM2 is
llama-arch, so this also checks the q/k row permutation llama.cpp's llama loader expects.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import numpy.typing as npt
import pytest

from server.toolcalls import get_format
from server.toolcalls.prompting import prompt_sha256
from tests.support.lora_helpers import ALL_LINEAR, PEFT_WARNINGS, llama_logits
from training.bases import SOURCE_FILE, Base, is_gguf_ref, resolve_base

pytestmark = [
    *PEFT_WARNINGS,
    # TRL 1.16 reads the training arguments' deprecated gradient_checkpointing field.
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]
MODELS = Path("models")
SMOL = "smollm2-135m-instruct"
# A LoRA on the dequantized base must land within this factor of the base-vs-base gap (measured
# on SmolLM2 Q4_1, 44 tokens: base gap mean 0.178 max 1.11; adapter gap mean 0.254 max 1.55, i.e.
# 1.43x; the unpermuted control 0.541 mean, 3.0x).
PARITY_FACTOR = 2.0
CONVERSATION = [
    {"role": "system", "content": "You are a support assistant. Use the tools when they help."},
    {"role": "user", "content": "Where is my order 12345? It was due on Monday."},
]

needs_smol = pytest.mark.usefixtures("smol_gguf")  # fetched once (tests/conftest.py), or skipped saying why


def test_gguf_refs_are_told_from_folders_and_hub_ids(tmp_path: Path) -> None:
    assert is_gguf_ref(SMOL)
    assert is_gguf_ref("some/where/model.gguf")
    assert not is_gguf_ref("Qwen/Qwen2.5-0.5B-Instruct")
    assert not is_gguf_ref(str(tmp_path))
    hub = resolve_base("Qwen/Qwen2.5-0.5B-Instruct")
    assert (hub.model, hub.gguf, hub.gguf_sha256) == ("Qwen/Qwen2.5-0.5B-Instruct", None, None)


def test_a_plain_folder_knows_its_own_model_gguf(tmp_path: Path) -> None:
    assert resolve_base(str(tmp_path)).gguf is None
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert resolve_base(str(tmp_path)).gguf == tmp_path / "model.gguf"


def test_an_unknown_name_is_refused_with_the_catalogue(tmp_path: Path) -> None:
    from server.errors import ConfigError

    with pytest.raises(ConfigError, match=SMOL):
        resolve_base(str(tmp_path / "missing.gguf"), models_dir=tmp_path)


@pytest.fixture(scope="module")
def smol() -> Base:
    return resolve_base(SMOL, models_dir=MODELS)


@pytest.mark.slow
@needs_smol
def test_catalogue_name_dequantizes_once_and_remembers_its_gguf(smol: Base) -> None:
    folder = Path(smol.model)
    assert smol.ref == SMOL
    assert smol.gguf is not None and smol.gguf.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert smol.gguf_sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert (folder / "chat_template.jinja").is_file()
    # The folder itself resolves to the same GGUF (export --base <folder> works too), and the
    # GGUF path resolves to the cached folder without converting again.
    again = resolve_base(str(folder))
    assert (again.gguf, again.gguf_sha256, again.ref) == (smol.gguf, smol.gguf_sha256, SMOL)
    mtime = (folder / SOURCE_FILE).stat().st_mtime
    assert resolve_base(str(smol.gguf)).model == smol.model
    assert (folder / SOURCE_FILE).stat().st_mtime == mtime


# --- logit parity ------------------------------------------------------------------------------


def _ids(base: Base) -> list[int]:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(base.model)
    text = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True, tokenize=False)
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def _hf_logits(base: Base, adapter: Path | None, ids: list[int]) -> npt.NDArray[np.float32]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base.model, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.train(False)
    with torch.no_grad():
        logits: npt.NDArray[np.float32] = model(torch.tensor([ids])).logits[0].numpy()
    return logits


def _random_adapter(base: Base, out: Path, seed: int = 0) -> Path:
    """A LoRA on every linear layer with seeded random A and B (B = 0 would pass ignored),
    scaled so the adapter moves the logits by a few units, as a trained one does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model: Any = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base.model, dtype=torch.float32),
        LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.copy_(0.04 * torch.randn(param.shape, generator=generator))
    model.save_pretrained(str(out))
    return out


def _gap(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> dict[str, float]:
    diff = np.abs(a - b)
    return {
        "max": float(diff.max()),
        "mean": float(diff.mean()),
        "argmax_agree": float((a.argmax(-1) == b.argmax(-1)).mean()),
    }


@pytest.fixture(scope="module")
def parity(smol: Base, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from training.export import gguf_lora
    from training.export.gguf_lora import convert_lora

    work = tmp_path_factory.mktemp("parity")
    adapter = _random_adapter(smol, work / "peft")
    lora = convert_lora(adapter, Path(smol.model), work / "adapter.gguf")
    ids = _ids(smol)
    hf_base, hf_lora = _hf_logits(smol, None, ids), _hf_logits(smol, adapter, ids)
    assert smol.gguf is not None
    cpp_base, cpp_lora = llama_logits(smol.gguf, None, ids), llama_logits(smol.gguf, lora.path, ids)
    # The control: the same adapter converted without llama's q/k row permutation.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf_lora, "_llama_rows", lambda pair, _config: pair)
        unpermuted = convert_lora(adapter, Path(smol.model), work / "unpermuted.gguf")
    cpp_unpermuted = llama_logits(smol.gguf, unpermuted.path, ids)
    yield {
        "lora": lora,
        "tokens": len(ids),
        "quantization": _gap(hf_base, cpp_base),
        "adapter": _gap(hf_lora, cpp_lora),
        "effect": _gap(hf_base, hf_lora),
        "unpermuted": _gap(hf_lora, cpp_unpermuted),
    }


@pytest.mark.slow
@needs_smol
def test_gguf_lora_on_quantized_base_matches_peft_on_dequantized_base(parity: dict[str, Any]) -> None:
    print(json.dumps({k: v for k, v in parity.items() if k != "lora"}, indent=2))
    quant, adapter, effect = parity["quantization"], parity["adapter"], parity["effect"]
    assert adapter["max"] <= PARITY_FACTOR * quant["max"]
    assert adapter["mean"] <= PARITY_FACTOR * quant["mean"]
    # The adapter moves the logits far more than either gap: a LoRA ignored by llama.cpp, or
    # applied with the wrong scale or row order, would fail the bounds above.
    assert effect["mean"] > 5 * adapter["mean"]


@pytest.mark.slow
@needs_smol
def test_without_the_llama_row_permutation_parity_fails(parity: dict[str, Any]) -> None:
    """The control: the bounds above are tight enough to catch a q/k LoRA in the wrong row order."""
    assert parity["unpermuted"]["mean"] > PARITY_FACTOR * parity["quantization"]["mean"]


@pytest.mark.slow
@needs_smol
def test_lora_file_carries_the_base_architecture(parity: dict[str, Any]) -> None:
    reader = gguf.GGUFReader(parity["lora"].path)
    arch = reader.fields["general.architecture"]
    assert bytes(arch.parts[arch.data[0]]).decode() == "llama"


# --- sft -> export -> served, by catalogue name -------------------------------------------------

ADMIN_KEY = "sk-admin-real-base-0123"
TRACK = {
    "type": "function",
    "function": {
        "name": "track_order",
        "description": "Where an order is.",
        "parameters": {
            "type": "object",
            "properties": {"order_id": {"type": "integer", "minimum": 1}},
            "required": ["order_id"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.slow
@needs_smol
def test_sft_and_export_by_catalogue_name_then_the_gateway_serves_it(smol: Base, tmp_path: Path) -> None:
    """`sft --base-model NAME` trains on the dequantized base; `export --base-model NAME` writes the
    LoRA for the catalogue's GGUF with its sha256; the gateway serving that GGUF loads it."""
    import openai

    from server.adapters.manifest import read_manifest
    from server.api.app import create_app
    from server.config import load_settings
    from server.metrics import Metrics
    from server.serving.build import build_registry
    from tests.support.live import running
    from training.__main__ import main
    from training.data.build import build_dataset
    from training.data.catalogue import SUPPORT
    from training.data.synth import SynthConfig

    data = build_dataset([SUPPORT], tmp_path / "data", 24, 0, SynthConfig(max_distractors=1))
    assert (
        main(
            [
                "sft",
                "--base-model",
                SMOL,
                "--train",
                str(data.train),
                "--max-steps",
                "2",
                "--out",
                str(tmp_path / "sft"),
                "--set",
                "batch_size=2",
                "--set",
                "learning_rate=0.001",
                "--set",
                "threads=2",
                "--set",
                "save_steps=100",
                "--set",
                "warmup=0",
            ]
        )
        == 0
    )
    adapter = tmp_path / "sft" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(smol.model).resolve()
    adapters = tmp_path / "adapters"
    assert (
        main(
            [
                "export",
                "--adapter",
                str(adapter),
                "--base-model",
                SMOL,
                "--name",
                "support-smol",
                "--out",
                str(adapters),
            ]
        )
        == 0
    )
    manifest = read_manifest(adapters / "support-smol")
    assert manifest.base_model.id == SMOL
    assert manifest.base_model.gguf_sha256 == smol.gguf_sha256
    # SmolLM2's template has no tool section: the prompt wording it was trained on is recorded
    template = (adapter / "chat_template.jinja").read_text(encoding="utf-8")
    assert manifest.tool_prompt_sha256 == prompt_sha256(template, get_format("json_envelope")) is not None
    assert gguf.GGUFReader(adapters / "support-smol" / "adapter.gguf").fields["general.architecture"]

    assert smol.gguf is not None
    settings = load_settings(
        None,
        **{
            "model.path": smol.gguf,
            "model.served_name": "smol",
            "model.threads": 2,
            "adapters.dir": adapters,
            "auth.admin_keys": [ADMIN_KEY],
        },
    )
    metrics = Metrics()
    app = create_app(settings, build_registry(settings, metrics), metrics)
    for live in running(app, settings, metrics):
        with openai.OpenAI(base_url=live.v1, api_key=ADMIN_KEY, max_retries=0, timeout=120) as client:
            assert sorted(m.id for m in client.models.list().data) == ["smol", "support-smol"]
            answer = client.chat.completions.create(  # type: ignore[call-overload]
                model="support-smol",
                messages=[{"role": "user", "content": "Where is order 12345?"}],
                tools=[TRACK],
                tool_choice="required",
                parallel_tool_calls=False,  # one call asked: a barely trained model may add more
                max_tokens=48,
                seed=1,
            )
            [call] = answer.choices[0].message.tool_calls or []
            assert answer.model == "support-smol" and call.function.name == "track_order"
            # 2 steps teach SmolLM2-135M little: the grammar guarantees an integer, not the right one.
            assert isinstance(json.loads(call.function.arguments)["order_id"], int)
