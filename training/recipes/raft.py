"""RAFT (reward-ranked fine-tuning) with the tool-calling verifier, in cycles:

1. sample N answers per training prompt from the current adapter (in-process, transformers);
2. score each with the verifier (the gateway's parser and validation, graded reward);
3. keep, per prompt, the best fully correct answer (highest reward, then fewest tokens);
4. keep the top `keep_fraction` of those, hardest prompts first (lowest mean reward over the
   N answers: a prompt the model already answers right every time teaches little);
5. fine-tune on them plus replayed SFT records, from the current adapter, the learning rate
   decayed each cycle;
6. score the held-out records (greedy); stop when the held-out score has not improved for
   `patience` cycles. The best cycle's adapter is the result.

Selection and stopping are pure functions; training goes through one seam (`Trainer`), by
default the SFT recipe (training.recipes.sft). Run folder: config.yaml, log.txt, metrics.json,
plots/raft.png, and per cycle samples.jsonl, train.jsonl, the SFT run (sft/, its adapter in
sft/adapter) and the held-out evaluation (eval/); cycle_0/eval scores the starting point.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from server.adapters.manifest import atomic_write_text
from server.toolcalls import Parsed
from training.data.records import Record, parse_record, read_records, to_json, validation_reason, write_records
from training.evaluation.evaluate import log_to, run_eval
from training.evaluation.generate import Sample, SampleSettings, TransformersBackend, dump_sample
from training.evaluation.items import EvalItem, read_items
from training.evaluation.report import pyplot, save
from training.evaluation.verifier import Verdict, verdict
from training.recipes.loader import dump_yaml, load_recipe
from training.recipes.sft import CONFIGS, SFTConfig, run_sft

if TYPE_CHECKING:
    from training.evaluation.generate import TransformersBackend

log = logging.getLogger("training.recipes.raft")


@dataclass(frozen=True)
class RaftConfig:
    model: Path = field(metadata={"help": "base model: transformers folder, GGUF file or catalogue name"})
    train_data: Path = field(metadata={"help": "canonical records whose prompts are sampled"})
    heldout_data: Path = field(metadata={"help": "canonical records scored after each cycle"})
    replay_data: Path | None = field(default=None, metadata={"help": "SFT records replayed beside the picks"})
    init_adapter: Path | None = field(default=None, metadata={"help": "adapter to start from (the SFT result)"})
    tool_format: str | None = field(default=None, metadata={"help": "default: adapter manifest, else detected"})
    cycles: int = field(default=3, metadata={"help": "at most this many cycles"})
    samples: int = field(default=8, metadata={"help": "answers sampled per prompt (N)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature"})
    top_p: float = 1.0
    max_tokens: int = field(default=256, metadata={"help": "per sampled or evaluated answer"})
    keep_fraction: float = field(default=0.25, metadata={"help": "share of the per-prompt picks trained on"})
    replay_ratio: float = field(default=0.5, metadata={"help": "replayed SFT records per kept pick"})
    learning_rate: float = 1e-4
    lr_decay: float = field(default=0.5, metadata={"help": "cycle k trains at learning_rate * lr_decay**(k-1)"})
    metric: str = field(default="mean_reward", metadata={"help": "held-out Scores field to maximise"})
    patience: int = field(default=1, metadata={"help": "cycles without improvement before stopping"})
    min_delta: float = field(default=0.0, metadata={"help": "smallest gain that counts as improvement"})
    seed: int = 0
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads (default: torch's)"})
    sft_recipe: Path | None = field(default=None, metadata={"help": "SFT recipe YAML (default: configs/sft.yaml)"})
    sft_set: tuple[str, ...] = field(default=(), metadata={"help": "SFT recipe overrides, key=value"})


class Trainer(Protocol):
    def __call__(
        self, config: RaftConfig, train_file: Path, init_adapter: Path | None, learning_rate: float, out: Path
    ) -> Path:
        """Fine-tune on `train_file`, from `init_adapter` (None: a fresh LoRA), in the run folder
        `out`; returns the adapter folder (PEFT files)."""
        ...


# ---- selection and stopping (pure) --------------------------------------------------------------


@dataclass(frozen=True)
class Pick:
    item: EvalItem
    sample: Sample
    verdict: Verdict
    mean_reward: float  # over the prompt's N answers: lower is harder
    pass_rate: float  # share of the N answers fully correct


def best_correct(samples: Sequence[Sample], verdicts: Sequence[Verdict]) -> int | None:
    """Index of the best fully correct answer (highest reward, then fewest tokens, then first)."""
    correct = [i for i, v in enumerate(verdicts) if v.correct and samples[i].error is None]
    return min(correct, key=lambda i: (-verdicts[i].reward, samples[i].tokens, i), default=None)


def pick_per_prompt(
    items: Sequence[EvalItem], samples: Sequence[Sequence[Sample]], verdicts: Sequence[Sequence[Verdict]]
) -> list[Pick]:
    """Each prompt's best fully correct answer, for the prompts that have one."""
    picks = []
    for item, answers, judged in zip(items, samples, verdicts, strict=True):
        best = best_correct(answers, judged)
        if best is not None:
            mean = sum(v.reward for v in judged) / len(judged)
            rate = sum(v.correct for v in judged) / len(judged)
            picks.append(Pick(item, answers[best], judged[best], mean, rate))
    return picks


def keep_top(picks: Sequence[Pick], fraction: float) -> list[Pick]:
    """The top `fraction` of the picks (at least one when there are any), hardest prompts
    first: lowest mean reward, then lowest pass rate, then input order."""
    ranked = sorted(range(len(picks)), key=lambda i: (picks[i].mean_reward, picks[i].pass_rate, i))
    return [picks[i] for i in ranked[: max(1, math.ceil(fraction * len(picks)))]] if picks else []


def should_stop(history: Sequence[float], patience: int, min_delta: float = 0.0) -> bool:
    """True when none of the last `patience` scores beat the best before them by more than
    `min_delta` (history[0] is the score before the first cycle)."""
    if len(history) <= patience:
        return False
    best_before = max(history[:-patience])
    return all(score <= best_before + min_delta for score in history[-patience:])


def best_cycle(history: Sequence[float]) -> int:
    """The cycle with the best score, the earliest among equals (0: the starting point)."""
    return max(range(len(history)), key=lambda k: (history[k], -k))


def as_record(pick: Pick, cycle: int) -> Record | str:
    """The picked answer as a canonical training record (the prompt, then the answer), or why not."""
    if pick.item.record is None:
        return f"{pick.item.id}: not from a canonical record"
    source = to_json(pick.item.record)
    meta = {**source["meta"], "id": f"{source['meta']['id']}-raft{cycle}", "source": "raft", "raft_cycle": cycle}
    messages = [*source["messages"][:-1], answer_message(pick.sample.parsed)]
    try:
        return parse_record({**source, "messages": messages, "meta": meta})
    except ValidationError as exc:
        return f"{pick.item.id}: {validation_reason(exc)}"


def answer_message(parsed: Parsed) -> dict[str, Any]:
    """A parsed answer as a canonical assistant message (arguments as objects)."""
    calls = [
        {"id": f"call_{k}", "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
        for k, c in enumerate(parsed.calls)
    ]
    message: dict[str, Any] = {"role": "assistant", "content": parsed.content.strip() or None}
    if calls:
        message["tool_calls"] = calls
    return message


def replay(records: Sequence[Record], count: int, seed: int) -> list[Record]:
    """`count` records drawn without replacement (all when there are fewer), seeded."""
    return random.Random(seed).sample(list(records), min(count, len(records)))


# ---- the loop -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CycleStats:
    cycle: int
    learning_rate: float
    prompts: int
    sampled_mean_reward: float
    sampled_pass_rate: float  # share of all sampled answers fully correct
    prompts_with_correct: int
    kept: int
    replayed: int
    unusable: int  # kept picks that made no valid record
    heldout: dict[str, Any]  # Scores of the held-out evaluation
    score: float
    adapter: str


@dataclass(frozen=True)
class RaftResult:
    best_adapter: Path | None  # None when the starting point (no adapter) stayed best
    best_cycle: int
    history: list[float]  # held-out score before the first cycle, then after each
    cycles: list[CycleStats]
    stopped: str


def run_raft(config: RaftConfig, out: Path, trainer: Trainer | None = None) -> RaftResult:
    """RAFT cycles into the run folder `out` (see the module docstring)."""
    from training.recipes.runs import CONFIG

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG, dump_yaml(config))
    with log_to(out / "log.txt"):
        return _run(config, out, trainer or sft_trainer)


@dataclass(frozen=True)
class _Inputs:
    items: list[EvalItem]  # prompts sampled each cycle
    heldout: list[EvalItem]
    pool: list[Record]  # replayed SFT records
    skipped: int  # bad input lines (counted, logged by the readers' callers)


def _run(config: RaftConfig, out: Path, train: Trainer) -> RaftResult:

    inputs = _read_inputs(config)
    greedy = SampleSettings(max_tokens=config.max_tokens, seed=config.seed)
    adapters: list[Path | None] = [config.init_adapter]
    backend = _backend(config, config.init_adapter)
    history = [_score(run_eval(inputs.heldout, backend, greedy, out / "cycle_0" / "eval"), config.metric)]
    cycles: list[CycleStats] = []
    stopped = f"ran all {config.cycles} cycles"
    log.info("start: held-out %s = %.4f, %d prompts", config.metric, history[0], len(inputs.items))
    for k in range(1, config.cycles + 1):
        done = _cycle(config, k, inputs, backend, adapters[-1], out / f"cycle_{k}", train)
        if done is None:
            stopped = f"cycle {k}: no fully correct answer among the samples"
            break
        stats, backend = done
        adapters.append(Path(stats.adapter))
        history.append(stats.score)
        cycles.append(stats)
        _write_metrics(out, config, history, cycles, "running", inputs.skipped)
        if should_stop(history, config.patience, config.min_delta):
            stopped = f"cycle {k}: held-out {config.metric} did not improve for {config.patience} cycle(s)"
            break
    best = best_cycle(history)
    _write_metrics(out, config, history, cycles, stopped, inputs.skipped, best)
    _plot(out / "plots" / "raft.png", config.metric, history, cycles)
    log.info("stopped: %s; best cycle %d", stopped, best)
    return RaftResult(adapters[best], best, history, cycles, stopped)


def _read_inputs(config: RaftConfig) -> _Inputs:
    items, bad_items = read_items(config.train_data)
    heldout, bad_heldout = read_items(config.heldout_data)
    pool, bad_pool = read_records(config.replay_data) if config.replay_data else ([], None)
    for name, bad in (("train", bad_items), ("held-out", bad_heldout), ("replay", bad_pool)):
        if bad:
            log.warning("%s data: %d bad lines skipped: %s", name, len(bad), bad.summary()["by_reason"])
    if not items or not heldout:
        raise ValueError(
            f"RAFT needs training prompts and held-out records; found {len(items)} in "
            f"{config.train_data}, {len(heldout)} in {config.heldout_data}"
        )
    return _Inputs(items, heldout, pool, len(bad_items) + len(bad_heldout) + len(bad_pool or ()))


def _cycle(
    config: RaftConfig,
    k: int,
    inputs: _Inputs,
    backend: TransformersBackend,
    adapter: Path | None,
    folder: Path,
    train: Trainer,
) -> tuple[CycleStats, TransformersBackend] | None:
    """One cycle: sample, score, select, train, evaluate; None when nothing could be kept."""

    settings = SampleSettings(
        n=config.samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_tokens=config.max_tokens,
        seed=config.seed + k,
    )
    items = inputs.items
    samples = backend.sample([i.prompt for i in items], settings)
    verdicts = [
        [verdict(i.prompt.tools, i.expected, s.parsed) for s in row] for i, row in zip(items, samples, strict=True)
    ]
    picks = pick_per_prompt(items, samples, verdicts)
    kept = keep_top(picks, config.keep_fraction)
    _write_samples(folder / "samples.jsonl", items, samples, verdicts, {id(p.sample) for p in kept})
    if not kept:
        return None
    replayed = replay(inputs.pool, round(config.replay_ratio * len(kept)), config.seed + k)
    unusable = _write_train(folder / "train.jsonl", kept, k, replayed, config.seed + k)
    rate = config.learning_rate * config.lr_decay ** (k - 1)
    trained = train(config, folder / "train.jsonl", adapter, rate, folder / "sft")
    backend = _backend(config, trained)
    greedy = SampleSettings(max_tokens=config.max_tokens, seed=config.seed)
    metrics = run_eval(inputs.heldout, backend, greedy, folder / "eval")
    flat = [v for row in verdicts for v in row]
    stats = CycleStats(
        k,
        rate,
        len(items),
        sum(v.reward for v in flat) / len(flat),
        sum(v.correct for v in flat) / len(flat),
        len(picks),
        len(kept),
        len(replayed),
        unusable,
        metrics["overall"],
        _score(metrics, config.metric),
        str(trained),
    )
    log.info(
        "cycle %d: kept %d of %d picks, lr %.2e, held-out %s = %.4f",
        k,
        len(kept),
        len(picks),
        rate,
        config.metric,
        stats.score,
    )
    return stats, backend


def sft_trainer(
    config: RaftConfig, train_file: Path, init_adapter: Path | None, learning_rate: float, out: Path
) -> Path:
    """The SFT recipe (training.recipes.sft) on the cycle's file, continuing `init_adapter`; RAFT sets
    the base model, data, adapter, learning rate, seed and threads over the recipe's values."""

    recipe = load_recipe(SFTConfig, config.sft_recipe or CONFIGS / "sft.yaml", config.sft_set)
    sft = replace(
        recipe,
        base_model=str(config.model),
        train=(str(train_file),),
        train_weights=(),
        init_adapter=str(init_adapter) if init_adapter else None,
        learning_rate=learning_rate,
        seed=config.seed,
        threads=config.threads,
    )
    result = run_sft(sft, out)
    if result.kind != "adapter":
        raise ValueError("RAFT trains adapters; the SFT recipe must not set full: true")
    return result.output


def _backend(config: RaftConfig, adapter: Path | None) -> TransformersBackend:

    return TransformersBackend(config.model, adapter, config.tool_format, threads=config.threads)


def _score(metrics: dict[str, Any], metric: str) -> float:
    value = metrics["overall"].get(metric)
    if metric not in metrics["overall"]:
        raise ValueError(f"unknown metric {metric!r}; use one of: {', '.join(metrics['overall'])}")
    return float(value) if value is not None else 0.0  # an empty denominator counts as nothing won


def _write_samples(
    path: Path,
    items: Sequence[EvalItem],
    samples: Sequence[Sequence[Sample]],
    verdicts: Sequence[Sequence[Verdict]],
    kept: set[int],
) -> None:
    rows = [
        {
            "id": item.id,
            "k": k,
            "reward": v.reward,
            "correct": v.correct,
            "kept": id(s) in kept,
            "answer": dump_sample(s),
        }
        for item, row, judged in zip(items, samples, verdicts, strict=True)
        for k, (s, v) in enumerate(zip(row, judged, strict=True))
    ]
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _write_train(path: Path, kept: Sequence[Pick], cycle: int, replayed: Sequence[Record], seed: int) -> int:
    """The cycle's SFT file: the kept picks as records plus the replayed ones, shuffled.
    Returns how many picks made no valid record (logged)."""
    made = [as_record(p, cycle) for p in kept]
    for problem in (m for m in made if isinstance(m, str)):
        log.warning("pick not trained on: %s", problem)
    mixed = [m for m in made if isinstance(m, Record)] + list(replayed)
    random.Random(seed).shuffle(mixed)
    write_records(path, mixed)
    return sum(isinstance(m, str) for m in made)


def _write_metrics(
    out: Path,
    config: RaftConfig,
    history: list[float],
    cycles: list[CycleStats],
    stopped: str,
    skipped: int,
    best: int | None = None,
) -> None:
    value = {
        "metric": config.metric,
        "history": history,
        "best_cycle": best,
        "stopped": stopped,
        "skipped_lines": skipped,
        "cycles": [asdict(c) for c in cycles],
    }
    atomic_write_text(out / "metrics.json", json.dumps(value, indent=2) + "\n")


def _plot(path: Path, metric: str, history: list[float], cycles: list[CycleStats]) -> None:

    plt = pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(range(len(history)), history, marker="o")
    left.set_xlabel("cycle")
    left.set_ylabel(f"held-out {metric}")
    left.set_title("Held-out score")
    xs = [c.cycle for c in cycles]
    right.plot(xs, [c.sampled_pass_rate for c in cycles], marker="o", label="sampled answers correct")
    right.plot(xs, [c.kept / max(1, c.prompts) for c in cycles], marker="s", label="prompts kept")
    right.set_xlabel("cycle")
    right.set_ylim(0, 1.05)
    right.set_title("Sampling")
    right.legend(fontsize="small")
    save(fig, path)


# ---- configuration and command line -------------------------------------------------------------


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> RaftConfig:
    """A RaftConfig from a YAML recipe (optional) and `key=value` overrides (training.recipes.loader);
    unknown keys and ill-typed values raise ValueError naming them."""

    return load_recipe(RaftConfig, path, overrides)


def add_command(sub: Any) -> None:
    parser = sub.add_parser(
        "raft",
        help="RAFT: sample, verify, keep the best correct answers, fine-tune; repeat",
        description="Reward-ranked fine-tuning cycles with the tool-calling verifier (see training/recipes/raft.py).",
        epilog="settings: " + "; ".join(f"{f.name}: {f.metadata.get('help', f.type)}" for f in fields(RaftConfig)),
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "configs" / "raft.yaml",
        help="YAML recipe of RaftConfig settings",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting (repeatable), e.g. --set samples=4",
    )
    parser.add_argument("--out", type=Path, help="run folder (default runs/raft-<time>)")
    parser.add_argument(
        "--base-model", help="the base model (sets `model`): transformers folder, GGUF file or catalogue name"
    )
    parser.set_defaults(handler=_run_command)


def _run_command(args: Any) -> int:
    from training.recipes.runs import make_run_dir

    try:
        overrides = [*args.overrides, *([f"model={args.base_model}"] if args.base_model else [])]
        config = load_config(args.config, overrides)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"raft: {exc}") from None
    out = make_run_dir("raft", args.out)
    result = run_raft(config, out)
    print(
        json.dumps(
            {
                "out": str(out),
                "best_cycle": result.best_cycle,
                "best_adapter": _str(result.best_adapter),
                "history": result.history,
                "stopped": result.stopped,
            },
            indent=2,
        )
    )
    return 0


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None
