"""`python -m training export`: a PEFT adapter -> adapters/<name>/ (PEFT files, GGUF LoRA,
chat template, manifest), atomically; and the gateway serves what it wrote.

Real parts throughout: the tiny model, a PEFT adapter with random non-zero weights, the real
converter, and for serving a live gateway (uvicorn, llama.cpp) and the official openai client.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from peft import LoraConfig

from server.adapters.manifest import read_manifest
from tests.support.live import Live, live_gateway
from tests.support.lora_helpers import ALL_LINEAR, PEFT_WARNINGS, make_peft_adapter
from training.__main__ import main
from training.demo.tiny import TEMPLATE_PATH, TinyModel
from training.export.adapter import STAGING, ExportError, ExportOptions, check_vllm_rank, export_adapter, read_scores

pytestmark = PEFT_WARNINGS

EXPECTED_FILES = {
    "manifest.json",
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter.gguf",
    "chat_template.jinja",
}


@pytest.fixture(scope="module")
def peft_dirs(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("peft")
    return {
        "one": make_peft_adapter(
            tiny_model, LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR), root / "one", 1
        ),
        "two": make_peft_adapter(
            tiny_model, LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj", "v_proj"]), root / "two", 2
        ),
    }


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_writes_a_complete_adapter_folder(
    tiny_model: TinyModel, peft_dirs: dict[str, Path], tmp_path: Path
) -> None:
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"bfcl": {"simple": 0.5, "n": 40}, "irrelevance": 0.9, "model": "x", "ok": True}))
    options = ExportOptions(scores=read_scores(metrics), data_sha256="ab" * 32)
    folder = export_adapter(peft_dirs["one"], tiny_model.hf_dir, "support", tmp_path / "adapters", options)
    assert folder == tmp_path / "adapters" / "support"
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES
    assert sorted(p.name for p in folder.parent.iterdir()) == ["support"]  # no staging left behind
    manifest = read_manifest(folder)
    assert manifest.name == "support" and manifest.tool_format == "hermes"
    assert manifest.base_model.sha256 == _sha256(tiny_model.hf_dir / "model.safetensors")
    assert manifest.base_model.gguf_sha256 == _sha256(tiny_model.gguf)  # <base>/model.gguf by default
    assert (manifest.lora.rank, manifest.lora.alpha, manifest.lora.use_rslora) == (8, 16.0, False)
    assert sorted(manifest.lora.target_modules) == sorted(ALL_LINEAR)
    assert manifest.scores == {"bfcl.simple": 0.5, "bfcl.n": 40.0, "irrelevance": 0.9}
    assert manifest.data_sha256 == "ab" * 32 and manifest.created is not None
    assert manifest.tool_prompt_sha256 is None  # trained on a template with a tool section: none recorded
    (peft_dirs["two"] / "tool_prompt.sha256").write_text("cd" * 32 + "\n")  # as training writes it
    recorded = export_adapter(peft_dirs["two"], tiny_model.hf_dir, "plain", tmp_path / "adapters")
    assert read_manifest(recorded).tool_prompt_sha256 == "cd" * 32
    assert "tool_prompt.sha256" not in {p.name for p in recorded.iterdir()}  # in the manifest, not a file
    assert (folder / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE_PATH.read_text(encoding="utf-8")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (folder / name).read_bytes() == (peft_dirs["one"] / name).read_bytes()


def test_reexport_replaces_only_when_complete(
    tiny_model: TinyModel, peft_dirs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "adapters"
    folder = export_adapter(peft_dirs["one"], tiny_model.hf_dir, "support", out)
    first = _sha256(folder / "adapter.gguf")
    # A failing re-export (DoRA cannot be converted) leaves the old folder as it was.
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (broken / name).write_bytes((peft_dirs["two"] / name).read_bytes())
    config = json.loads((broken / "adapter_config.json").read_text())
    (broken / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(ExportError, match="DoRA"):
        export_adapter(broken, tiny_model.hf_dir, "support", out)
    assert _sha256(folder / "adapter.gguf") == first and read_manifest(folder).lora.rank == 8
    assert sorted(p.name for p in out.iterdir()) == ["support"]
    # A good one replaces it whole.
    export_adapter(peft_dirs["two"], tiny_model.hf_dir, "support", out)
    assert _sha256(folder / "adapter.gguf") != first and read_manifest(folder).lora.rank == 16
    assert {p.name for p in folder.iterdir()} == EXPECTED_FILES and not (out / STAGING).exists()


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("../escape", ExportOptions(), "must match"),
        ("ok", ExportOptions(tool_format="smoke_signals"), "unknown tool format"),
    ],
)
def test_bad_requests_are_refused(
    tiny_model: TinyModel, peft_dirs: dict[str, Path], tmp_path: Path, name: str, options: ExportOptions, message: str
) -> None:
    with pytest.raises(ExportError, match=message):
        export_adapter(peft_dirs["one"], tiny_model.hf_dir, name, tmp_path / "adapters", options)
    assert not any((tmp_path / "adapters").glob("*/manifest.json"))


@pytest.mark.parametrize(
    ("config", "needed"),
    [
        ({"r": 8}, 8),
        ({"r": 4}, 8),
        ({"r": 1}, 1),
        ({"r": 17}, 32),
        ({"r": 8, "rank_pattern": {"q_proj": 64}}, 64),
        ({"r": 300}, 320),
        ({"r": 512}, 512),
    ],
)
def test_vllm_max_lora_rank(config: dict[str, object], needed: int) -> None:
    assert check_vllm_rank(config) == needed


def test_rank_beyond_vllm_is_refused() -> None:
    with pytest.raises(ExportError, match="largest --max-lora-rank"):
        check_vllm_rank({"r": 1024})


def test_cli(
    tiny_model: TinyModel, peft_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "adapters"
    args = [
        "export",
        "--adapter",
        str(peft_dirs["two"]),
        "--base",
        str(tiny_model.hf_dir),
        "--name",
        "cli",
        "--out",
        str(out),
        "--base-id",
        "tiny-random",
        "--tool-choice",
        "required",
        "--no-tool-threshold",
        "0.35",
        "--f16",
    ]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["vllm_max_lora_rank"] == 16 and set(summary["files"]) == EXPECTED_FILES
    manifest = read_manifest(out / "cli")
    assert manifest.base_model.id == "tiny-random" and manifest.tool_choice == "required"
    assert manifest.no_tool_threshold == 0.35
    for bad in ("1.5", "nan", "-0.1", "x"):
        with pytest.raises(SystemExit) as exit_info:
            main([*args[:-3], "--no-tool-threshold", bad])
        assert exit_info.value.code == 2
        assert "--no-tool-threshold" in capsys.readouterr().err
    assert main([*args[:-1], "--tool-format", "nope"]) == 2
    assert "unknown tool format" in capsys.readouterr().err


# --- served by the gateway ------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(
    tiny_model: TinyModel, peft_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    root = tmp_path_factory.mktemp("served") / "adapters"
    export_adapter(peft_dirs["one"], tiny_model.hf_dir, "support", root)
    flags: dict[str, Any] = {"model.served_name": "tiny", "adapters.dir": root}
    yield from live_gateway(tiny_model.gguf, **flags)


def test_gateway_serves_the_exported_adapter(served: Live) -> None:
    with openai.OpenAI(base_url=served.v1, api_key="unused", max_retries=0, timeout=60) as client:
        assert {"tiny", "support"} <= {m.id for m in client.models.list().data}
        answers: dict[str, set[str | None]] = {}
        for model in ("tiny", "support", "tiny", "support"):
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Where is order 12345?"}],
                temperature=0,
                max_tokens=16,
                seed=0,
            )
            answers.setdefault(model, set()).add(reply.choices[0].message.content)
    # Deterministic per model across interleaving, and the adapter changes the answer.
    assert len(answers["tiny"]) == 1 and len(answers["support"]) == 1
    assert answers["tiny"] != answers["support"]
