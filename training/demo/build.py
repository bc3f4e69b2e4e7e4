"""`python -m training build-demo`: the demo's customer-support adapter, on a pretrained base.

1. Data: synthetic conversations over the customer-support catalogue, split with held-out
   phrasings and slot values, plus near-miss pairs for DPO.
2. The base: a GGUF file or catalogue name (`base_model`, SmolLM2-135M-Instruct by default),
   dequantized once (training/bases.py); its own chat template and tool format.
3. A LoRA adapter (SFT, assistant-only loss), then DPO on the near-miss pairs and one RAFT cycle,
   both from the SFT adapter.
4. Evaluation on held-out support prompts, every model (base, SFT, DPO, RAFT) twice: unconstrained
   and greedy in-process, and through a real gateway (the GGUF, each adapter as a GGUF LoRA,
   grammars on, `tool_choice` auto) -> report.md / report.json in the work folder.
5. Export of the adapter with the best mean verifier reward through the gateway to
   adapters/support-demo (manifest with both sets of scores).

`base_model: ""` replaces stage 2 with the earlier from-scratch base (now a test fixture): a
byte-level BPE and a small Qwen2 trained here on general synthetic conversations (copy
curriculum first, half the records' tools renamed) -> models/demo (+ model.gguf).

Every stage writes into `work/`; the published model and adapter folders are replaced only
when whole. The recipe is training/configs/demo.yaml, each field overridable with --set.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from server.adapters.manifest import atomic_write_text, read_manifest, sha256_files, write_manifest
from training.bases import resolve_base
from training.data.build import build_dataset
from training.data.catalogue import GENERAL, SUPPORT
from training.data.records import read_records, render_record, write_records
from training.data.rename import rename_file
from training.data.synth import SynthConfig
from training.demo.tokenizer import ENDOFTEXT, IM_END, sample_corpus, save_tokenizer, train_tokenizer, word
from training.evaluation.evaluate import run_eval
from training.evaluation.generate import SampleSettings, TransformersBackend
from training.evaluation.items import read_items
from training.export.adapter import ExportOptions, export_adapter
from training.recipes.dpo import DPOConfig, run_dpo
from training.recipes.loader import RecipeError, load_recipe
from training.recipes.sft import SFTConfig, run_sft

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

log = logging.getLogger("training.demo.build")
RECIPE = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
FOUR = ("valid_call_rate", "tool_name_accuracy", "argument_match", "false_call_rate")


@dataclass(frozen=True)
class DemoConfig:
    """The build-demo recipe; the defaults are training/configs/demo.yaml's values (a test holds them equal)."""

    model_out: str = "models/demo"
    adapter_out: str = "adapters"
    adapter_name: str = "support-demo"
    work: str = "runs/demo"
    seed: int = 0
    threads: int | None = None
    # data
    general_records: int = 8000
    support_records: int = 2000
    eval_records: int = 100  # held-out support prompts scored per model
    distractors: int = 1  # extra tools per example: ~20 tokens of prompt each (compact template)
    # Extra base-model conversations from the services catalogue, whose random ids can only be
    # copied, never memorised: copying values from the request is the skill the adapter needs.
    copy_records: int = 2000
    # share of the general records with their tools renamed (training/data/rename.py), so that
    # names and argument keys are copied from the tool list, not learned by heart; 0: none
    rename_share: float = 0.5
    # chat template, a file in training/templates/: hermes_compact.jinja lists each tool on one
    # line instead of its JSON schema (prompts about 40% shorter; docs/demo.md)
    template: str = "hermes_compact.jinja"
    # tokenizer and base model shape (Qwen2)
    vocab_size: int = 2048
    hidden_size: int = 192
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 576
    max_len: int = 768  # the real base's prompts: ~400 tokens with the tools, up to ~700
    # copy curriculum (training/demo/curriculum.py): the base first learns to copy ids from requests,
    # on the copy records' first calls, tool lists shown to a growing share; 0 steps skips it
    copy_steps: int = 300
    copy_lr: float = 5e-4
    copy_batch: int = 16
    # base model: trained from scratch
    base_steps: int = 800
    base_lr: float = 5e-4  # after the copy curriculum: 2e-3 undid half of its copying (docs/demo.md)
    base_batch: int = 8
    # adapter: LoRA SFT, then DPO
    lora_r: int = 16
    lora_alpha: int = 32
    # the adapters' training dtype; auto: bfloat16 on a CPU with AMX / AVX512-BF16 (2x the SFT
    # steps/s of float32 on such a Xeon, docs/demo.md), float32 on an AVX2-only one (bfloat16
    # SFT steps 14x slower there, docs/benchmarks.md); the adapter weights stay float32 (PEFT)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Records per forward pass in the adapter stages; the batches above are reached by gradient
    # accumulation. On CPU, a batch of 8 x ~650 tokens makes activations of hundreds of MB that
    # are mapped and page-faulted afresh every step (more kernel time than compute); 2 at a time
    # gives the same losses 2.1x faster here (docs/demo.md). 0: no accumulation.
    micro_batch: int = 2
    # 160 steps: eval loss 0.10 against 0.57 at 40, false calls 0.06 against 0.44 (docs/demo.md)
    sft_steps: int = 160
    sft_lr: float = 1e-3
    sft_batch: int = 8
    # SFT draws the training split's parallel records this many times: at 1 (14% of records) the
    # one token that adds a second call was learnt as a prior, P ~0.1 on every parallel prompt,
    # and all 10 held-out parallel prompts got one call; at 3, 3 of 10 got two or more; at 6, 7
    # of 10, 3 of them right, with fewer false calls; at 12, 8 of 10 but still 3 right, and 4 single
    # requests and 2 false calls lost (one seed each; docs/demo.md)
    parallel_weight: float = 6.0
    # General-catalogue records (tools renamed at rename_share) mixed once into the real base's
    # SFT. Support records alone cost BFCL simple 0.06 (x6); 200 replayed keep every BFCL number
    # at or above the base's, 600 raise false calls on irrelevance 0.44 -> 0.60, and both lower
    # the support scores at the same steps (docs/demo.md), so not by default. 0: none
    replay_records: int = 0
    dpo_steps: int = 20
    dpo_lr: float = 3e-5  # 1e-4 cut valid calls by 0.06-0.13 (docs/demo.md)
    dpo_beta: float = 0.1
    dpo_batch: int = 4
    # The pair kinds DPO trains on (training/data/pairs.py), () every kind. The two kinds on the
    # count of calls alone (missing_call, extra_call) kept SFT's valid calls where every kind cost
    # 0.13 of them, but lost the fewer false calls that every kind gives (docs/demo.md)
    dpo_kinds: tuple[str, ...] = ()
    # RAFT (training/recipes/raft.py) from the SFT adapter, beside DPO: sample answers to training
    # prompts, keep the verified ones, fine-tune on them; 0 cycles skips it
    raft_cycles: int = 1
    raft_prompts: int = 64  # training prompts sampled per cycle
    raft_samples: int = 4  # answers sampled per prompt
    raft_val: int = 32  # validation prompts its stop rule reads (never the test prompts)
    raft_steps: int = 16
    # Every prompt's best verified answer is kept (RAFT's own rule), with as many SFT records
    # replayed: keeping only the hardest quarter (RaftConfig's default) kept 13 answers, 12 of them
    # calls, and 16 steps over those 19 records raised false calls 0.05 -> 0.51 (docs/demo.md)
    raft_keep: float = 1.0
    raft_replay: float = 1.0
    raft_lr: float = 5e-4
    # every model scored again through the gateway (its GGUF, the GGUF LoRA, grammars on,
    # tool_choice auto): what a client gets, beside the unconstrained numbers
    gateway_eval: bool = True
    # The base: a GGUF file or catalogue name (training/bases.py). The adapter is trained on its
    # dequantized weights with its own chat template and exported for its GGUF; `template`, the
    # general data and the from-scratch fields are then unused. "" builds the from-scratch base
    # (a test fixture since pretrained weights can be fetched here).
    base_model: str = "smollm2-135m-instruct"
    # How the adapter writes its calls: in the template's tags, or as bare JSON lines (what the base
    # writes when its call tag is a dead token: Qwen2.5-Coder's, docs/demo.md). auto: lines when the
    # tags' output rows are identical (training/bases.py dead_tags), else the template's.
    call_syntax: Literal["auto", "template", "lines"] = "auto"
    # Each adapter's no-tool threshold calibrated on the validation prompts (through the embedded
    # engine, as the gateway reads it: training/evaluation/threshold.py), written to its manifest,
    # so the served evaluation and the exported adapter use it; off: no threshold
    calibrate_threshold: bool = False


@dataclass(frozen=True)
class DemoResult:
    model_dir: Path
    adapter_dir: Path
    report: dict[str, Any]


def build_demo(config: DemoConfig, progress: Callable[[str], None] | None = None) -> DemoResult:
    """Run every stage; returns where the model and adapter went and the evaluation table."""
    say = progress or _stderr
    work = Path(config.work)
    work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    if config.threads:
        import torch

        torch.set_num_threads(config.threads)

    if config.base_model:
        return _build_on_real_base(config, work, timings, say)
    with _stage("data", "data", timings, say):
        general, support = _data(config, work, say)
    with _stage("tokenizer", "tokenizer and initial model", timings, say):
        init_dir = _init_model(config, work, general[0].train)
    if config.copy_steps:
        with _stage("copy", f"copy curriculum: {config.copy_steps} steps", timings, say):
            init_dir = _copy_curriculum(config, work, init_dir, general[1], say)
    with _stage("base", f"base model: {config.base_steps} steps from scratch", timings, say):
        model_dir = _train_base(config, work, init_dir, general)
    return _adapters_and_report(config, work, model_dir, support, timings, say)


def _build_on_real_base(
    config: DemoConfig, work: Path, timings: dict[str, float], say: Callable[[str], None]
) -> DemoResult:
    """Stages 1, 4-6 on a pretrained base: support data only, no tokenizer or base training."""

    with _stage("data", "data: support", timings, say):
        n = config.support_records + 2 * config.eval_records
        share = config.eval_records / n
        support = build_dataset(
            [SUPPORT],
            work / "data-support",
            n,
            config.seed + 1,
            SynthConfig(max_distractors=config.distractors),
            fractions=(1 - 2 * share, share, share),
            progress=say,
        )
        replay = _replay(config, work, say) if config.replay_records else None
    with _stage("base", f"base model: {config.base_model} (dequantized once, cached)", timings, say):
        model_dir = resolve_base(config.base_model).folder
    return _adapters_and_report(config, work, model_dir, support, timings, say, replay)


def _replay(config: DemoConfig, work: Path, say: Callable[[str], None]) -> Path:
    """General-catalogue training records for SFT replay, a `rename_share` of them renamed."""
    general = build_dataset(
        [GENERAL],
        work / "data-replay",
        config.replay_records,
        config.seed + 4,
        SynthConfig(max_distractors=config.distractors),
        fractions=(1.0, 0.0, 0.0),
        progress=say,
    )
    if config.rename_share:
        general = _renamed(general, config.rename_share, config.seed + 3, say)
    return Path(general.train)


def _adapters_and_report(
    config: DemoConfig,
    work: Path,
    model_dir: Path,
    support: Any,
    timings: dict[str, float],
    say: Callable[[str], None],
    replay: Path | None = None,
) -> DemoResult:
    config = replace(config, call_syntax=_call_syntax(config, model_dir))
    say(f"calls trained as: {config.call_syntax}")
    with _stage("sft", f"adapter: LoRA SFT, {config.sft_steps} steps", timings, say):
        sft = _train_adapter(config, work, model_dir, support, replay)
    adapters = {"sft": sft}
    with _stage("dpo", f"adapter: DPO, {config.dpo_steps} steps", timings, say):
        adapters["dpo"] = _train_dpo(config, work, model_dir, sft, support)
    if config.raft_cycles:
        with _stage("raft", f"adapter: RAFT from SFT, {config.raft_cycles} cycle(s)", timings, say):
            raft = _train_raft(config, work, model_dir, sft, support)
        if raft is not None:  # None: no sampled answer was right, so RAFT had nothing to train on
            adapters["raft"] = raft
    items, skipped = read_items(support.test, limit=config.eval_records)
    with _stage("eval", f"evaluation: base, {', '.join(adapters)}; unconstrained", timings, say):
        scores = {"base": _evaluate(config, work / "eval-base", model_dir, None, items, skipped)}
        for name, adapter in adapters.items():
            scores[name] = _evaluate(config, work / f"eval-{name}", model_dir, adapter, items, skipped)
    served: dict[str, dict[str, Any]] = {}
    if config.gateway_eval:
        with _stage("gateway", "evaluation through the gateway: constrained, tool_choice auto", timings, say):
            served = _evaluate_served(config, work, model_dir, adapters, items, skipped, support.val)
    # What a client gets decides: the gateway's numbers when measured, else the unconstrained ones.
    ranked = served or scores
    best = max(adapters, key=lambda name: _rank(ranked[name]))
    with _stage("export", f"export: the {best} adapter", timings, say):
        adapter_dir = _export(config, model_dir, adapters[best], scores[best], served.get(best), support)
    report = {
        "scores": scores,
        "served": served,
        "exported": best,
        "seconds": timings,
        "config": asdict(config),
        "model": str(model_dir),
        "adapter": str(adapter_dir),
    }
    atomic_write_text(work / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(work / "report.md", report_markdown(report))
    say(report_markdown(report))
    return DemoResult(model_dir, adapter_dir, report)


# ---- stages ------------------------------------------------------------------------------------


def _call_syntax(config: DemoConfig, model_dir: Path) -> Literal["template", "lines"]:
    """`call_syntax` resolved: auto is lines when the template's call tags are dead tokens."""
    if config.call_syntax != "auto":
        return config.call_syntax
    if not config.base_model:
        return "template"  # the from-scratch base learns its tags from nothing: they are all alive
    from transformers import AutoTokenizer

    from server.toolcalls.prompting import detected_format
    from training.bases import dead_tags

    template = AutoTokenizer.from_pretrained(model_dir).chat_template
    envelope = detected_format(template).envelope
    return "lines" if dead_tags(model_dir, (envelope.open.strip(), envelope.close.strip())) else "template"


def _lines(config: DemoConfig) -> bool:
    return config.call_syntax == "lines"


def _data(config: DemoConfig, work: Path, say: Callable[[str], None]) -> tuple[Any, Any]:

    synth = SynthConfig(max_distractors=config.distractors)
    general = build_dataset(
        [GENERAL],
        work / "data-general",
        config.general_records,
        config.seed,
        synth,
        fractions=(0.94, 0.03, 0.03),
        progress=say,
    )
    copying = build_dataset(
        [GENERAL / "services.yaml"],
        work / "data-copy",
        config.copy_records,
        config.seed + 2,
        synth,
        fractions=(0.9, 0.05, 0.05),
        progress=say,
    )
    # The support split keeps enough held-out prompts to score: eval_records of test.
    n = config.support_records + 2 * config.eval_records
    share = config.eval_records / n
    support = build_dataset(
        [SUPPORT],
        work / "data-support",
        n,
        config.seed + 1,
        synth,
        fractions=(1 - 2 * share, share, share),
        progress=say,
    )
    if config.rename_share:  # not the copy records: renamed, their drills stopped copying ids
        general = _renamed(general, config.rename_share, config.seed + 3, say)
    return (general, copying), support


def _renamed(data: Any, share: float, seed: int, say: Callable[[str], None]) -> Any:
    """`data` whose train split has a `share` of its records' tools renamed (in a new file)."""

    target = data.train.with_name("train-renamed.jsonl")
    n = rename_file(data.train, target, share, seed, word)
    say(f"{data.train.parent.name}: {n} training records with their tools renamed")
    return replace(data, train=target)


def _init_model(config: DemoConfig, work: Path, general_train: Path) -> Path:
    from training.demo.tiny import TEMPLATE_PATH, TinySpec, make_model, token_id

    template = (TEMPLATE_PATH.parent / config.template).read_text(encoding="utf-8")
    records, _ = read_records(general_train)
    corpus = [render_record(r, template) for r in records] + sample_corpus(config.seed)
    tokenizer = train_tokenizer(config.vocab_size, config.seed, corpus=corpus)
    spec = TinySpec(
        seed=config.seed,
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_layers=config.layers,
        num_heads=config.heads,
        num_kv_heads=config.kv_heads,
        intermediate_size=config.intermediate_size,
        initializer_range=0.02,
        perturb_vectors=False,
    )
    model = make_model(spec, tokenizer.get_vocab_size(), token_id(tokenizer, IM_END), token_id(tokenizer, ENDOFTEXT))
    out = work / "base-init"
    shutil.rmtree(out, ignore_errors=True)
    save_tokenizer(tokenizer, out, template)
    model.save_pretrained(out)
    return out


def _copy_curriculum(config: DemoConfig, work: Path, init_dir: Path, copying: Any, say: Callable[[str], None]) -> Path:
    from training.demo.curriculum import CurriculumConfig, train_copy

    curriculum = CurriculumConfig(
        steps=config.copy_steps, learning_rate=config.copy_lr, batch_size=config.copy_batch, seed=config.seed
    )
    out = work / "copy-init"
    train_copy(init_dir, copying.train, copying.test, work / "copy", out, curriculum, say)
    return out


def _train_base(config: DemoConfig, work: Path, init_dir: Path, general: tuple[Any, ...]) -> Path:
    from training.export.gguf_model import export_gguf
    from training.recipes.runs import atomic_dir

    sft = SFTConfig(
        base_model=str(init_dir),
        train=tuple(str(g.train) for g in general),
        val=str(general[0].val),
        full=True,
        loss_on="all",
        learning_rate=config.base_lr,
        warmup=30,
        max_steps=config.base_steps,
        batch_size=config.base_batch,
        max_len=config.max_len,
        seed=config.seed,
        save_steps=max(100, config.base_steps // 4),
        logging_steps=10,
        threads=config.threads,
    )
    result = run_sft(sft, work / "base")
    target = Path(config.model_out)
    with atomic_dir(target) as tmp:
        for item in result.output.iterdir():
            if item.is_file():
                shutil.copy2(item, tmp / item.name)
        export_gguf(tmp, tmp / "model.gguf")
    return target


def _batches(batch: int, micro: int) -> tuple[int, int]:
    """(batch_size, grad_accum) for an effective `batch` of records, `micro` per pass."""
    if micro <= 0 or micro >= batch or batch % micro:
        return batch, 1
    return micro, batch // micro


def _train_adapter(config: DemoConfig, work: Path, model_dir: Path, support: Any, replay: Path | None = None) -> Path:
    batch, accum = _batches(config.sft_batch, config.micro_batch)
    train, weights = _sft_mix(config, work, support.train, replay)
    sft = SFTConfig(
        base_model=str(model_dir),
        train=train,
        train_weights=weights,
        val=str(support.val),
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        learning_rate=config.sft_lr,
        warmup=10,
        max_steps=config.sft_steps,
        batch_size=batch,
        grad_accum=accum,
        max_len=config.max_len,
        seed=config.seed,
        save_steps=max(50, config.sft_steps // 2),
        logging_steps=10,
        threads=config.threads,
        dtype=config.dtype,
        call_lines=_lines(config),
    )
    return run_sft(sft, work / "sft").output


def _sft_mix(
    config: DemoConfig, work: Path, train: Path, replay: Path | None
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """SFT's files and weights: the support split (parallel records weighted), replay once."""
    files, weights = _weighted_parallel(config, work, train)
    if replay is None:
        return files, weights
    return (*files, str(replay)), (*(weights or (1.0,) * len(files)), 1.0)


def _weighted_parallel(config: DemoConfig, work: Path, train: Path) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """The training split as SFT files and weights: its parallel records apart, `parallel_weight`
    times (the split itself, and so the held-out prompts' mix, is unchanged)."""
    if config.parallel_weight == 1:
        return (str(train),), ()
    records, _ = read_records(train)
    parallel = [r for r in records if r.meta.kind == "parallel"]
    rest = [r for r in records if r.meta.kind != "parallel"]
    rest_file = write_records(work / "sft-train-rest.jsonl", rest)
    parallel_file = write_records(work / "sft-train-parallel.jsonl", parallel)
    return (str(rest_file), str(parallel_file)), (1.0, config.parallel_weight)


def _train_dpo(config: DemoConfig, work: Path, model_dir: Path, sft_adapter: Path, support: Any) -> Path:
    batch, accum = _batches(config.dpo_batch, config.micro_batch)
    dpo = DPOConfig(
        base_model=str(model_dir),
        adapter=str(sft_adapter),
        pairs=(str(support.pairs),),
        kinds=config.dpo_kinds,
        learning_rate=config.dpo_lr,
        beta=config.dpo_beta,
        max_steps=config.dpo_steps,
        batch_size=batch,
        grad_accum=accum,
        max_len=config.max_len,
        seed=config.seed,
        threads=config.threads,
        dtype=config.dtype,
        call_lines=_lines(config),
    )
    return run_dpo(dpo, work / "dpo").output


def _train_raft(config: DemoConfig, work: Path, model_dir: Path, sft_adapter: Path, support: Any) -> Path | None:
    """RAFT from the SFT adapter on `raft_prompts` training prompts, its stop rule read on the
    validation split (never the test prompts the report scores); SFT records replayed."""
    from training.recipes.raft import RaftConfig, run_raft

    records, _ = read_records(support.train)
    prompts = work / "raft-prompts.jsonl"
    write_records(prompts, random.Random(config.seed).sample(records, min(config.raft_prompts, len(records))))
    val = write_records(work / "raft-val.jsonl", read_records(support.val)[0][: config.raft_val])
    batch, accum = _batches(config.sft_batch, config.micro_batch)
    raft = RaftConfig(
        model=model_dir,
        train_data=prompts,
        heldout_data=val,
        replay_data=support.train,
        init_adapter=sft_adapter,
        cycles=config.raft_cycles,
        samples=config.raft_samples,
        max_tokens=96,
        keep_fraction=config.raft_keep,
        replay_ratio=config.raft_replay,
        learning_rate=config.raft_lr,
        seed=config.seed,
        threads=config.threads,
        sft_set=(
            f"max_steps={config.raft_steps}",
            f"batch_size={batch}",
            f"grad_accum={accum}",
            f"max_len={config.max_len}",
            f"lora_r={config.lora_r}",
            f"lora_alpha={config.lora_alpha}",
            f"dtype={config.dtype}",
            f"call_lines={str(_lines(config)).lower()}",
            "lora_dropout=0.0",
            "warmup=5",
            f"save_steps={max(50, config.raft_steps)}",
        ),
    )
    # The best trained cycle on the validation prompts, even when none beat the SFT start: the
    # report shows what RAFT did either way. None: no cycle ran (nothing verified to keep).
    cycles = run_raft(raft, work / "raft").cycles
    return Path(max(cycles, key=lambda c: c.score).adapter) if cycles else None


def _evaluate(
    config: DemoConfig, out: Path, model_dir: Path, adapter: Path | None, items: list[Any], skipped: Any
) -> dict[str, Any]:
    backend = TransformersBackend(model_dir, adapter, batch_size=16, threads=config.threads)
    return _scores(run_eval(items, backend, SampleSettings(max_tokens=96, seed=config.seed), out, skipped))


def _scores(metrics: dict[str, Any]) -> dict[str, Any]:
    overall = metrics["overall"]
    return {
        **{key: overall.get(key) for key in (*FOUR, "mean_reward", "records")},
        "by_argument": metrics["by_argument"],
    }


def _evaluate_served(
    config: DemoConfig,
    work: Path,
    model_dir: Path,
    adapters: dict[str, Path],
    items: list[Any],
    skipped: Any,
    val: Path | None = None,
) -> dict[str, dict[str, Any]]:
    """The base and every adapter through a real `python -m server` on loopback: the base's GGUF,
    each adapter exported to a GGUF LoRA (as `export` writes it), requests with `tool_choice`
    auto, so the grammar's share of the result reads off beside the unconstrained numbers. With
    `calibrate_threshold`, each adapter's manifest carries its threshold, calibrated on `val`."""
    from training.evaluation.gateway import served_gateway
    from training.evaluation.generate import EndpointBackend

    folder = work / "served-adapters"
    shutil.rmtree(folder, ignore_errors=True)
    names = {"base": "base"}
    for name, adapter in adapters.items():
        names[name] = export_adapter(adapter, model_dir, f"demo-{name}", folder).name
    calibrated: dict[str, dict[str, Any]] = {}
    if config.calibrate_threshold and val is not None:
        exported = [names[name] for name in adapters]
        by_folder = _calibrate(config, model_dir, folder, exported, read_items(val, limit=config.eval_records)[0])
        calibrated = {name: by_folder[names[name]] for name in adapters}
    settings = SampleSettings(max_tokens=96, seed=config.seed)
    served: dict[str, dict[str, Any]] = {}
    # The gateway's own thread default (half the cores): more llama.cpp threads than free cores
    # spin, and this process and the HTTP side need one.
    with served_gateway(_served_gguf(model_dir), folder, work / "gateway.log", threads=config.threads) as url:
        for name, model in names.items():
            # 4 in flight: the gateway's default 4 slots decode them in one batch. A generous
            # timeout: on a shared machine a request can wait for its slot for minutes.
            backend = EndpointBackend(url, model, tool_choice="auto", concurrency=4, timeout=900)
            try:
                served[name] = _scores(run_eval(items, backend, settings, work / f"eval-gateway-{name}", skipped))
            finally:
                backend.close()
            served[name] |= calibrated.get(name, {})
    return served


def _calibrate(
    config: DemoConfig, model_dir: Path, folder: Path, names: list[str], val: list[Any]
) -> dict[str, dict[str, Any]]:
    """Each served adapter's no-tool threshold on the validation prompts, written into its
    manifest; what was kept and vetoed there, for the report."""
    from training.evaluation.threshold import calibrate

    out = {}
    for name, cal in calibrate(_served_gguf(model_dir), folder, names, val, config.threads).items():
        manifest = read_manifest(folder / name)
        write_manifest(folder / name, manifest.model_copy(update={"no_tool_threshold": cal.threshold}))
        out[name] = {"no_tool_threshold": cal.threshold, "val_calls_kept": cal.kept, "val_no_call_vetoed": cal.vetoed}
    return out


def _served_gguf(model_dir: Path) -> Path:
    """The GGUF the gateway serves for this base: a real base's quantized file, or ours."""
    gguf = resolve_base(str(model_dir)).gguf
    return gguf if gguf is not None else model_dir / "model.gguf"


def _export(
    config: DemoConfig,
    model_dir: Path,
    adapter: Path,
    scores: dict[str, Any],
    served: dict[str, Any] | None,
    support: Any,
) -> Path:

    numbers = {f"support_test.{k}": float(v) for k, v in scores.items() if k in FOUR and v is not None}
    numbers |= {f"support_test_gateway.{k}": float(v) for k, v in (served or {}).items() if k in FOUR and v is not None}
    options = ExportOptions(
        base_id=None if config.base_model else "callgate/demo",
        scores=numbers,
        data_sha256=sha256_files([support.train, support.pairs]),
        no_tool_threshold=(served or {}).get("no_tool_threshold"),
    )
    return export_adapter(adapter, model_dir, config.adapter_name, Path(config.adapter_out), options)


# ---- report ------------------------------------------------------------------------------------


def _rank(s: dict[str, Any]) -> tuple[float, float]:
    """Higher is better: the mean verifier reward (the issue's graded reward, RAFT's too: it weighs
    wrong arguments, wrong tools, missed calls and false calls in one number), then fewer false
    calls: a call nobody asked for is the error an agent loop cannot undo."""
    return round(float(s.get("mean_reward") or 0), 9), -float(s.get("false_call_rate") or 0)


NAMES = {
    "valid_call_rate": "valid-call rate",
    "tool_name_accuracy": "tool-name accuracy",
    "argument_match": "argument match",
    "false_call_rate": "false-call rate",
}
# Issue #17's targets, for the adapter served through the gateway (tool_choice auto).
TARGETS = {
    "valid_call_rate": ">= 0.97",
    "tool_name_accuracy": ">= 0.95",
    "argument_match": ">= 0.90",
    "false_call_rate": "<= 0.03",
}


def report_markdown(report: dict[str, Any]) -> str:
    lines: list[str] = []
    tables = [("unconstrained (transformers, greedy)", report["scores"])]
    if report.get("served"):
        tables.append(("through the gateway (llama.cpp GGUF, grammars on, `auto`)", report["served"]))
    for title, scores in tables:
        lines += [
            f"| held-out support prompts, {title} | " + " | ".join(scores) + " | target |",
            "|---|" + "---:|" * len(scores) + "---|",
        ]
        for key in FOUR:
            cells = ["-" if s.get(key) is None else f"{s[key]:.3f}" for s in scores.values()]
            lines.append(f"| {NAMES[key]} | " + " | ".join(cells) + f" | {TARGETS[key]} |")
        rewards = ["-" if s.get("mean_reward") is None else f"{s['mean_reward']:.3f}" for s in scores.values()]
        lines.append("| mean reward (picks the export) | " + " | ".join(rewards) + " | |")
        if any("no_tool_threshold" in s for s in scores.values()):
            cuts = [_threshold_cell(s) for s in scores.values()]
            title = "no-tool threshold (validation: calls kept / no-calls vetoed)"
            lines.append(f"| {title} | " + " | ".join(cuts) + " | |")
        lines.append("")
    scores = tables[-1][1]
    arguments = sorted({k for s in scores.values() for k in s.get("by_argument", {})})
    if arguments:
        lines += [
            f"| argument (valid calls, right names), {tables[-1][0].split(' (')[0]} | " + " | ".join(scores) + " |",
            "|---|" + "---:|" * len(scores),
        ]
        for key in arguments:
            cells = [_argument_cell(s.get("by_argument", {}).get(key)) for s in scores.values()]
            lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
        lines.append("")
    total = sum(report["seconds"].values())
    lines.append(
        f"Exported: the {report['exported']} adapter. Build time {total / 60:.1f} min: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items())
        + "."
    )
    return "\n".join(lines) + "\n"


def _threshold_cell(s: dict[str, Any]) -> str:
    if "no_tool_threshold" not in s:
        return "-"
    cut = s["no_tool_threshold"]
    return f"{'none' if cut is None else f'{cut:.3f}'} ({s['val_calls_kept']:.2f} / {s['val_no_call_vetoed']:.2f})"


def _argument_cell(row: dict[str, Any] | None) -> str:
    return "-" if not row else f"{row['accuracy']:.2f} ({row['n']})"


@contextmanager
def _stage(key: str, name: str, timings: dict[str, float], say: Callable[[str], None]) -> Iterator[None]:
    say(f"[build-demo] {name} ...")
    start = time.perf_counter()
    yield
    timings[key] = round(time.perf_counter() - start, 1)
    say(f"[build-demo] {name}: done in {timings[key]:.0f} s")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- command line ------------------------------------------------------------------------------


def add_command(sub: SubParsers) -> None:
    parser = sub.add_parser(
        "build-demo",
        help="build the demo support adapter on a real base and score it (~50 min on 2 CPU cores)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--config", type=Path, default=RECIPE, help="recipe YAML (default: %(default)s)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one recipe field, e.g. --set base_steps=300 (repeatable)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_recipe(DemoConfig, args.config, args.overrides)
    except RecipeError as exc:
        print(f"build-demo: {exc}", file=sys.stderr)
        return 2
    templates = Path(__file__).resolve().parents[1] / "templates"
    if not (templates / config.template).is_file():
        known = ", ".join(sorted(p.name for p in templates.glob("*.jinja")))
        print(f"build-demo: no template {config.template!r} in {templates} (there are: {known})", file=sys.stderr)
        return 2
    result = build_demo(config)
    print(
        json.dumps(
            {"model": str(result.model_dir), "adapter": str(result.adapter_dir), "scores": result.report["scores"]},
            indent=2,
        )
    )
    return 0
