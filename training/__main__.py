"""`python -m training <command>`: the training module's command line.

Each command is one `_add_<command>` function that declares its arguments and binds a handler;
handlers import their heavy dependencies lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from training.allocator import keep_freed_memory
from training.demo.tokenizer import DEFAULT_VOCAB_SIZE

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace], int]


def _add_init_tiny(sub: SubParsers) -> None:

    parser = sub.add_parser(
        "init-tiny",
        help="build the random-weight tiny model (transformers files + model.gguf)",
        description="Train a tokenizer, make a seeded random Qwen2 model, export it to GGUF.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=DEFAULT_VOCAB_SIZE)
    parser.add_argument("--outtype", choices=("f32", "f16"), default="f32", help="GGUF weights")
    parser.set_defaults(handler=_run_init_tiny)


def _run_init_tiny(args: argparse.Namespace) -> int:
    from training.demo.tiny import TinySpec, build_tiny
    from training.export.gguf_model import OutType

    start = time.perf_counter()
    spec = TinySpec(seed=args.seed, vocab_size=args.vocab_size)
    tiny = build_tiny(args.out, spec, OutType(args.outtype))
    summary = {
        "hf_dir": str(tiny.hf_dir),
        "gguf": str(tiny.gguf),
        "params": tiny.n_params,
        "vocab_size": tiny.vocab_size,
        "gguf_bytes": tiny.gguf.stat().st_size,
        "seconds": round(time.perf_counter() - start, 2),
    }
    print(json.dumps(summary, indent=2))
    return 0


# Commands defined here, then modules that each define `add_command(sub)` for theirs (one line
# each below). Those modules must import their heavy dependencies inside the handler only.
COMMANDS: tuple[Callable[[SubParsers], None], ...] = (_add_init_tiny,)
COMMAND_MODULES: tuple[str, ...] = (
    "training.recipes.sft",
    "training.recipes.dpo",
    "training.export.adapter",
    "training.data.cli",
    "training.evaluation.evaluate",
    "training.recipes.raft",
    "training.demo.build",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training",
        description="Build, train, evaluate and export callgate's tool-calling models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(sub)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    exit_on_sigterm()
    keep_freed_memory()  # before torch is imported: every later allocation is served from the heap
    handler: Handler = args.handler
    return handler(args)


def exit_on_sigterm() -> None:
    """SIGTERM (a scheduler's stop, `timeout`, a cancelled CI job) exits through SystemExit rather
    than killing the process where it stands, so `finally` blocks run: a served evaluation's
    gateway child is stopped instead of orphaned with its port and model."""
    signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))


if __name__ == "__main__":
    sys.exit(main())
