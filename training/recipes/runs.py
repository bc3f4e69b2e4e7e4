"""Run folders: `runs/<command>-<timestamp>/` (or a chosen folder) holding config.yaml, log.jsonl
(every trainer log line), metrics.json, plots/*.png and checkpoints/checkpoint-*; the last
checkpoint for `--resume`; and outputs published atomically (built in a temp folder, renamed into
place), so a crash never leaves half an adapter where a whole one is expected.
Knows nothing of SFT or DPO beyond the trainer's callback protocol.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from server.adapters.manifest import atomic_write_text

RUNS_ROOT = Path("runs")
CONFIG = "config.yaml"
LOG = "log.jsonl"
METRICS = "metrics.json"
CHECKPOINTS = "checkpoints"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def make_run_dir(command: str, out: Path | None = None, root: Path = RUNS_ROOT) -> Path:
    """`out` if given (created if needed), else a fresh `root/<command>-<timestamp>`."""
    if out is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Each process would stamp its own folder a second apart; they must share one.
        raise ValueError("--out is required when training runs on several processes")
    run_dir = out if out is not None else root / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def last_checkpoint(run_dir: Path) -> Path | None:
    """The highest-numbered complete checkpoint-N under run_dir/checkpoints, if any."""
    folder = run_dir / CHECKPOINTS
    found = []
    for child in folder.iterdir() if folder.is_dir() else ():
        match = _CHECKPOINT.match(child.name)
        # Trainer writes trainer_state.json last: a folder without it is a checkpoint cut short.
        if match and (child / "trainer_state.json").is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final` in one rename."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
        old = None
        if final.exists():  # a rerun: move the previous output aside, then swap
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class JsonlLog(TrainerCallback):
    """Appends every trainer log (loss, lr, eval_loss, DPO rewards...) to log.jsonl."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        line = {"step": state.global_step, "epoch": state.epoch, "time": round(time.time(), 3), **logs}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(line, default=float) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_curves(log: Sequence[dict[str, Any]], keys: Sequence[str], out: Path, title: str) -> Path | None:
    """One PNG of `keys` against the step (the latest value per step wins: a resumed run logs
    the steps after its checkpoint again). None when no key has a value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {key: _by_step(log, key) for key in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, points in series.items():
        steps = sorted(points)
        ax.plot(steps, [points[s] for s in steps], marker="o" if len(steps) < 30 else None, label=key)
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _by_step(log: Sequence[dict[str, Any]], key: str) -> dict[int, float]:
    return {int(line["step"]): float(line[key]) for line in log if isinstance(line.get(key), int | float)}
