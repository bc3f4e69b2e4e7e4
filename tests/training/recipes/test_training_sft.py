"""SFT on the tiny model with TRL's real SFTTrainer and PEFT: labels come from our masks (TRL
does not re-render), the loss is the mean over masked-in tokens only, padding never hides the
end-of-turn, LoRA trains and saves an adapter vLLM / llama.cpp can load, runs resume, outputs are
published atomically."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from server.adapters.manifest import VLLM_RANKS
from server.toolcalls.prompting import detected_format, prompt_sha256
from tests.support.adapter_folders import PLAIN_TEMPLATE
from tests.support.training_records import ERROR_RECOVERY, MULTI_TURN, NO_TOOL, PARALLEL, RECORDS, SINGLE
from training.recipes.sft import SFTConfig

pytestmark = [
    # transformers 5 deprecates the names PEFT and TRL still read; not ours to fix.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]


def config(tiny_model: Any, **changes: Any) -> SFTConfig:
    # One thread: on a shared 2-core machine torch's 2 OpenMP threads spin against other
    # processes and a step gets ~30x slower.
    base = SFTConfig(
        base_model=str(tiny_model.hf_dir),
        lora_r=8,
        batch_size=2,
        max_steps=3,
        logging_steps=1,
        save_steps=100,
        learning_rate=5e-3,
        warmup=0,
        lr_scheduler="constant",
        threads=1,
    )
    return dataclasses.replace(base, **changes)


def test_labels_follow_the_masks_and_loss_is_over_masked_tokens_only(tiny_model: Any, tmp_path: Path) -> None:
    import torch

    from training.recipes.render import render_record
    from training.recipes.sft import build_trainer

    records = [SINGLE, MULTI_TURN]  # different lengths: the batch is padded
    setup = build_trainer(config(tiny_model), tmp_path / "run", train_records=records)
    trainer, tokenizer = setup.trainer, setup.tokenizer
    dataset = trainer.train_dataset
    assert dataset.column_names == ["input_ids", "labels"]  # TRL folded our mask into labels
    batch = trainer.data_collator([dataset[0], dataset[1]])
    for row, rec in enumerate(records):
        example = render_record(rec, setup.template, tokenizer)
        n = len(example.input_ids)
        assert batch["input_ids"][row, :n].tolist() == example.input_ids  # not re-rendered or re-tokenized
        expected = [t if m else -100 for t, m in zip(example.input_ids, example.assistant_masks, strict=True)]
        assert batch["labels"][row, :n].tolist() == expected
        assert (batch["labels"][row, n:] == -100).all()

    model = trainer.model
    model.eval()  # no LoRA dropout: both losses see the same forward
    with torch.no_grad():
        loss = trainer.compute_loss(model, {k: v.clone() for k, v in batch.items()})
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    masks = [render_record(r, setup.template, tokenizer).assistant_masks for r in records]
    total, count = 0.0, 0
    for row, mask in enumerate(masks):
        logp = torch.log_softmax(logits[row].float(), dim=-1)
        for pos, bit in enumerate(mask):
            if bit:  # token at pos is predicted from position pos - 1
                total -= logp[pos - 1, batch["input_ids"][row, pos]].item()
                count += 1
    assert count == sum(map(sum, masks))
    assert loss.item() == pytest.approx(total / count, rel=1e-4)
    # A loss over every token (the bug this guards against) is clearly different.
    everything = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["input_ids"][:, 1:].reshape(-1), reduction="mean"
    )
    assert abs(everything.item() - loss.item()) > 1e-3


def test_padding_with_the_eos_token_keeps_the_end_of_turn_in_the_loss(tiny_model: Any, tmp_path: Path) -> None:
    # FIELD.md trap: EOS used as padding and then masked, so the model never learns to stop.
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from training.recipes.sft import build_trainer

    setup = build_trainer(config(tiny_model), tmp_path / "run", train_records=[SINGLE, MULTI_TURN])
    im_end = setup.tokenizer.convert_tokens_to_ids("<|im_end|>")
    collate = DataCollatorForLanguageModeling(pad_token_id=im_end)
    rows = [setup.trainer.train_dataset[i] for i in range(2)]
    batch = collate(rows)
    for row, data in enumerate(rows):
        real = len(data["input_ids"])
        trained_ends = [
            k for k in range(real) if batch["input_ids"][row, k] == im_end and batch["labels"][row, k] != -100
        ]
        expected = [
            k
            for k, (t, lab) in enumerate(zip(data["input_ids"], data["labels"], strict=True))
            if t == im_end and lab != -100
        ]
        assert trained_ends == expected and expected  # every assistant <|im_end|> is still trained
        assert (batch["labels"][row, real:] == -100).all()


def test_loss_on_all_trains_every_token(tiny_model: Any, tmp_path: Path) -> None:
    # Pretraining the demo's base model from scratch: language from every turn, not just replies.
    from training.recipes.sft import build_trainer

    setup = build_trainer(config(tiny_model, full=True, loss_on="all"), tmp_path / "run", train_records=[MULTI_TURN])
    row = setup.trainer.train_dataset[0]
    assert row["labels"] == row["input_ids"]
    assert setup.data["train_data"]["loss_tokens"] == setup.data["train_data"]["tokens"] == len(row["input_ids"])


def test_rank_vllm_cannot_serve_is_refused_before_training(tiny_model: Any, tmp_path: Path) -> None:
    from training.recipes.sft import run_sft

    with pytest.raises(ValueError, match=r"lora_r=12 .* one of \(1, 8, 16"):
        run_sft(config(tiny_model, lora_r=12), tmp_path / "run", train_records=[SINGLE])
    assert not (tmp_path / "run" / "adapter").exists()


def test_no_trainable_record_is_a_clear_error(tiny_model: Any, tmp_path: Path) -> None:
    from training.recipes.sft import run_sft

    with pytest.raises(ValueError, match="no trainable records.*no_trained_turn"):
        run_sft(config(tiny_model), tmp_path / "run", train_records=[{"messages": [{"role": "user", "content": "x"}]}])


def test_lora_sft_trains_saves_and_reloads_identically(tiny_model: Any, tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from training.recipes.runs import read_log
    from training.recipes.sft import build_trainer, linear_module_names, save_output

    # float32 named: with `auto` on a CPU that multiplies in bfloat16 the trainer leaves the model's
    # forward under bfloat16 autocast, and the comparison below would be of rounding, not of files
    setup = build_trainer(config(tiny_model, max_steps=4, dtype="float32"), tmp_path / "run", train_records=RECORDS * 2)
    model = setup.trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert before and all("lora_" in n for n in before)
    setup.trainer.train()
    after = dict(model.named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in before), "every LoRA tensor must change"
    losses = [line["loss"] for line in read_log(setup.run_dir / "log.jsonl") if "loss" in line]
    assert len(losses) == 4

    out = setup.run_dir / "adapter"
    save_output(model, setup, setup_config := config(tiny_model), out)
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["modules_to_save"] is None and adapter_config["r"] in VLLM_RANKS
    assert Path(adapter_config["base_model_name_or_path"]) == Path(setup_config.base_model).resolve()
    base = AutoModelForCausalLM.from_pretrained(setup_config.base_model)
    linear = linear_module_names(base)
    assert sorted(adapter_config["target_modules"]) == linear and "lm_head" not in linear
    assert (out / "chat_template.jinja").read_text() == setup.template
    assert not (out / "tool_prompt.sha256").exists()  # hermes renders the tools itself
    # A template without a tool section trains on the gateway's tool prompt: its wording is recorded.
    plain = dataclasses.replace(setup, template=PLAIN_TEMPLATE)
    save_output(model, plain, setup_config, setup.run_dir / "plain")
    digest = prompt_sha256(PLAIN_TEMPLATE, detected_format(PLAIN_TEMPLATE))
    assert (setup.run_dir / "plain" / "tool_prompt.sha256").read_text().strip() == digest
    reloaded = PeftModel.from_pretrained(base, out)
    ids = torch.tensor([setup.trainer.train_dataset[0]["input_ids"]])
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-5)
        with reloaded.disable_adapter():
            plain = reloaded(input_ids=ids).logits
    assert not torch.allclose(plain, reloaded(input_ids=ids).logits, atol=1e-4)  # the adapter does something


def test_run_folder_from_files_with_val_and_bad_lines(tiny_model: Any, tmp_path: Path) -> None:
    from training.recipes.loader import RecipeError, build
    from training.recipes.sft import run_sft

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n{broken\n", encoding="utf-8")
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps(PARALLEL) + "\n" + json.dumps(NO_TOOL) + "\n", encoding="utf-8")
    cfg = config(tiny_model, train=(str(train),), val=str(val), eval_steps=2, max_steps=4)
    result = run_sft(cfg, tmp_path / "run")
    run = result.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["train_data"]["kept"] == len(RECORDS) and metrics["train_data"]["skipped"]["bad_json"] == 1
    assert metrics["val_data"]["kept"] == 2 and "eval_loss" in metrics and metrics["global_step"] == 4
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in log if "eval_loss" in line][:2] == [2, 4]
    png = run / "plots" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert build(SFTConfig, saved) == cfg
    with pytest.raises(RecipeError):
        build(SFTConfig, {**saved, "lora_rank": 8})
    assert result.output == run / "adapter" and (result.output / "adapter_model.safetensors").is_file()
    assert not [p for p in run.iterdir() if p.name.startswith(".adapter")]  # no temp folder left


class Crash(Exception):
    pass


def test_interrupted_run_resumes_from_its_last_checkpoint(tiny_model: Any, tmp_path: Path) -> None:
    from transformers import TrainerCallback

    from training.recipes.runs import last_checkpoint, read_log
    from training.recipes.sft import run_sft

    class CrashAt(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.global_step == 3:
                raise Crash

    cfg = config(tiny_model, max_steps=5, save_steps=2)
    run = tmp_path / "run"
    with pytest.raises(Crash):
        run_sft(cfg, run, train_records=RECORDS, callbacks=[CrashAt()])
    assert last_checkpoint(run) == run / "checkpoints" / "checkpoint-2"
    assert not (run / "adapter").exists()  # the crash left no adapter, not half of one
    result = run_sft(cfg, run, train_records=RECORDS, resume=True)
    assert result.metrics["resumed_from"].endswith("checkpoint-2") and result.metrics["global_step"] == 5
    steps = [line["step"] for line in read_log(run / "log.jsonl") if "loss" in line]
    assert steps == [1, 2, 3, 4, 5]  # step 3 crashed before its log line; trained again from checkpoint-2
    assert (result.output / "adapter_model.safetensors").is_file()


def test_full_fine_tune_writes_a_loadable_model(tiny_model: Any, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.recipes.sft import run_sft

    result = run_sft(
        config(tiny_model, full=True, max_steps=2, learning_rate=1e-3),
        tmp_path / "run",
        train_records=[SINGLE, ERROR_RECOVERY],
    )
    assert result.kind == "model" and result.output == tmp_path / "run" / "model"
    trained = AutoModelForCausalLM.from_pretrained(result.output)
    base = AutoModelForCausalLM.from_pretrained(tiny_model.hf_dir)
    assert not torch.equal(trained.lm_head.weight, base.lm_head.weight)
    assert (
        AutoTokenizer.from_pretrained(result.output).chat_template
        == AutoTokenizer.from_pretrained(tiny_model.hf_dir).chat_template
    )


def test_replay_mixing_repeats_and_samples_by_weight() -> None:
    from training.recipes.sft import mix_records

    new = [{"id": f"n{i}"} for i in range(10)]
    old = [{"id": f"o{i}"} for i in range(10)]
    mixed = mix_records([new, old], [2.0, 0.3], seed=1)
    ids = [r["id"] for r in mixed]
    assert len(ids) == 23 and all(ids.count(f"n{i}") == 2 for i in range(10))
    assert sum(i.startswith("o") for i in ids) == 3 and len({i for i in ids if i.startswith("o")}) == 3
    assert mix_records([new, old], [2.0, 0.3], seed=1) == mixed  # seeded
    with pytest.raises(ValueError, match="train_weights"):
        mix_records([new, old], [1.0], seed=0)


def test_sft_command_from_a_recipe_with_overrides(tiny_model: Any, tmp_path: Path) -> None:
    from training.__main__ import main

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    code = main(
        [
            "sft",
            "--base-model",
            str(tiny_model.hf_dir),
            "--train",
            str(train),
            "--out",
            str(run),
            "--max-steps",
            "2",
            "--set",
            "lora_r=8",
            "--set",
            "threads=1",
            "--set",
            "batch_size=2",
        ]
    )
    assert code == 0
    import yaml

    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["lora_r"] == 8 and saved["max_steps"] == 2 and saved["train"] == [str(train)]
    assert saved["lora_alpha"] == 32  # the rest comes from training/configs/sft.yaml
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--set", "lora_rank=8"], "unknown recipe keys ['lora_rank']"),
        (["--set", "lora_r=eight"], "lora_r='eight' is not"),
        (["--set", "lora_r"], "is not key=value"),
        (["--set", "lora_r=12"], "one of (1, 8, 16"),
        (["--train", "/nonexistent.jsonl"], "nonexistent.jsonl"),
    ],
)
def test_sft_command_bad_input_exits_2_with_the_reason(
    tiny_model: Any, tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.__main__ import main

    train = tmp_path / "train.jsonl"
    train.write_text(json.dumps(SINGLE) + "\n", encoding="utf-8")
    base = ["sft", "--base-model", str(tiny_model.hf_dir), "--train", str(train), "--out", str(tmp_path / "run")]
    assert main(base + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "adapter").exists()


@pytest.mark.slow
def test_two_processes_share_one_run(tiny_model: Any, tmp_path: Path) -> None:
    # DDP over gloo on CPU, launched like `accelerate launch` / `torchrun` on GPUs: one global
    # batch per step across both processes, one log line per step, one adapter.
    import subprocess
    import sys

    train = tmp_path / "train.jsonl"
    train.write_text("\n".join(json.dumps(r) for r in RECORDS * 4) + "\n", encoding="utf-8")
    run = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "training",
        "sft",
        "--base-model",
        str(tiny_model.hf_dir),
        "--train",
        str(train),
        "--out",
        str(run),
        "--max-steps",
        "3",
        "--set",
        "lora_r=8",
        "--set",
        "threads=1",
        "--set",
        "batch_size=2",
        "--set",
        "logging_steps=1",
    ]
    repo = Path(__file__).resolve().parents[3]
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [line for line in (json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()) if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2, 3]
    assert steps[-1]["epoch"] == pytest.approx(3 * 2 * 2 / 20)  # 2 processes x batch 2 per step, 20 records
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
