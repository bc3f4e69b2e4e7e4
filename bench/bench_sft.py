"""SFT throughput through the real training path (training.recipes.sft.build_trainer: records rendered
with the chat template, TRL's SFTTrainer, PEFT LoRA or full): supervised tokens per second (tokens
in the loss / wall time), all tokens per second, and peak memory (CUDA max allocated, or the
process's max RSS on CPU). Random weights, shapes from Qwen2.5 or the demo model's; each shape
and mode runs in its own process so peak memory is its own.

    python bench/bench_sft.py [--shape demo,qwen2-0.5b] [--modes lora,full] [--runs demo:lora,...] [--seq 384]
                              [--batch 8] [--steps 6] [--device cpu|cuda] [--dtype auto|float32,bfloat16]
                              [--write]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import write_section  # noqa: E402

# Qwen2.5 shapes (config.json of Qwen/Qwen2.5-{0.5B,1.5B}-Instruct); "smollm2-135m" is the demo's real base
# (SmolLM2-135M-Instruct's dimensions, as a Qwen2); "demo" the from-scratch fixture's (training/configs/demo.yaml).
SHAPES: dict[str, dict[str, Any]] = {
    "demo": {
        "hidden_size": 192,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 576,
        "vocab_size": None,
        "tie_word_embeddings": False,
    },
    "smollm2-135m": {
        "hidden_size": 576,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "intermediate_size": 1536,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
    },
    "qwen2-0.5b": {
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
    "qwen2-1.5b": {
        "hidden_size": 1536,
        "num_hidden_layers": 28,
        "num_attention_heads": 12,
        "num_key_value_heads": 2,
        "intermediate_size": 8960,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FILLER = "please tell me about the weather forecast and my order status for the trip next week "


def build_base(folder: Path, shape: str, vocab: int, hidden: int | None, dtype: str) -> None:
    """Tokenizer (the demo's byte-level BPE) + a random Qwen2 of `shape`, saved to `folder`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from training.demo.tiny import TEMPLATE_PATH
    from training.demo.tokenizer import ENDOFTEXT, IM_END, save_tokenizer, train_tokenizer

    tokenizer = train_tokenizer(vocab, seed=0)
    save_tokenizer(tokenizer, folder, TEMPLATE_PATH.read_text(encoding="utf-8"))
    dims = dict(SHAPES[shape])
    dims["vocab_size"] = dims["vocab_size"] or tokenizer.get_vocab_size()
    if hidden and shape == "demo":
        dims["hidden_size"], dims["intermediate_size"] = hidden, 3 * hidden
    config = Qwen2Config(
        **dims,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.token_to_id(IM_END),
        pad_token_id=tokenizer.token_to_id(ENDOFTEXT),
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    if dtype == "bfloat16":
        model = model.bfloat16()
    model.save_pretrained(folder)


def record_of_length(folder: Path, seq: int) -> tuple[dict[str, Any], int, int]:
    """One tool-call record whose rendering is about `seq` tokens; (record, tokens, loss tokens)."""
    from transformers import AutoTokenizer

    from training.recipes.render import render_record

    tokenizer = AutoTokenizer.from_pretrained(folder)

    def make(words: int) -> dict[str, Any]:
        text = " ".join((FILLER.split() * (words // 15 + 1))[:words])
        call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        return {
            "messages": [
                {"role": "user", "content": text + " Paris?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
            ],
            "tools": [WEATHER],
        }

    lo, hi = 1, 4 * seq
    while lo < hi:  # the most filler words that keep the record within seq tokens
        mid = (lo + hi + 1) // 2
        fits = len(render_record(make(mid), tokenizer.chat_template, tokenizer).input_ids) <= seq
        lo, hi = (mid, hi) if fits else (lo, mid - 1)
    example = render_record(make(lo), tokenizer.chat_template, tokenizer)
    return make(lo), len(example.input_ids), example.n_loss


def measure_one(args: argparse.Namespace) -> dict[str, Any]:
    """One shape x mode, in this process: warm-up steps, then timed steps."""
    import torch
    from transformers import TrainerCallback

    from training.recipes.sft import SFTConfig, build_trainer

    stamps: dict[int, float] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps[state.global_step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.base)
        record, n_tokens, n_loss = record_of_length(base, args.seq)
        total_steps = args.warmup_steps + args.steps
        config = SFTConfig(
            base_model=str(base),
            full=args.mode == "full",
            lora_r=16,
            batch_size=args.batch,
            max_steps=total_steps,
            max_len=args.seq,
            logging_steps=10_000,
            save_steps=10_000,
            warmup=0,
            learning_rate=1e-4,
            dtype=args.dtype,
            threads=args.threads,
            gradient_checkpointing=args.gradient_checkpointing,
        )
        setup = build_trainer(
            config, Path(tmp) / "run", train_records=[record] * (args.batch * total_steps), callbacks=[Clock()]
        )
        n_params = sum(p.numel() for p in setup.trainer.model.parameters())
        trainable = sum(p.numel() for p in setup.trainer.model.parameters() if p.requires_grad)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        setup.trainer.train()
    seconds = stamps[total_steps] - stamps[args.warmup_steps]
    rows = args.batch * args.steps
    peak = (
        torch.cuda.max_memory_allocated()
        if torch.cuda.is_available()
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "shape": args.shape,
        "mode": args.mode,
        "params": n_params,
        "trainable": trainable,
        "seq": n_tokens,
        "loss_tokens_per_row": n_loss,
        "batch": args.batch,
        "steps": args.steps,
        "seconds": seconds,
        "supervised_tps": rows * n_loss / seconds,
        "total_tps": rows * n_tokens / seconds,
        "step_s": seconds / args.steps,
        "peak_bytes": peak,
        "threads": torch.get_num_threads(),
        "dtype": str(setup.trainer.model.dtype).removeprefix("torch."),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def run_child(args: argparse.Namespace, shape: str, mode: str, base: Path, dtype: str) -> dict[str, Any]:
    """Measure in a fresh process, so its peak memory is training's alone (the base is built here)."""
    argv = [
        sys.executable,
        __file__,
        "--child",
        "--base",
        str(base),
        "--shape",
        shape,
        "--mode",
        mode,
        "--seq",
        str(args.seq),
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--warmup-steps",
        str(args.warmup_steps),
        "--vocab",
        str(args.vocab),
        "--dtype",
        dtype,
    ]
    argv += ["--threads", str(args.threads)] if args.threads else []
    argv += ["--hidden", str(args.hidden)] if args.hidden else []
    argv += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
    env = dict(
        os.environ, CUDA_VISIBLE_DEVICES="" if args.device == "cpu" else os.environ.get("CUDA_VISIBLE_DEVICES", "0")
    )
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{shape} {mode} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| shape | mode | params | trainable | dtype | threads | seq | loss tokens/row | batch | s/step | "
        "supervised tok/s | total tok/s | peak memory |",
        "|" + "---|" * 13,
    ]
    for r in results:
        lines.append(
            f"| {r['shape']} | {r['mode']} | {r['params'] / 1e6:.1f}M | {r['trainable'] / 1e6:.2f}M | "
            f"{r['dtype']} | {r['threads']} | {r['seq']} | {r['loss_tokens_per_row']} | {r['batch']} | "
            f"{r['step_s']:.2f} | {r['supervised_tps']:.0f} | {r['total_tps']:.0f} | "
            f"{r['peak_bytes'] / 2**30:.2f} GiB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="demo", help=f"comma-separated: {', '.join(SHAPES)}")
    parser.add_argument("--modes", default="lora,full", help="comma-separated: lora, full")
    parser.add_argument("--runs", help="shape:mode pairs instead, e.g. demo:lora,demo:full,qwen2-0.5b:lora")
    parser.add_argument("--seq", type=int, default=384, help="tokens per record")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first")
    parser.add_argument("--vocab", type=int, default=2048, help="tokenizer vocabulary (the demo model's size)")
    parser.add_argument("--hidden", type=int, help="demo shape only: hidden size (intermediate = 3x)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="comma-separated, every run in each: auto (bf16 where the hardware multiplies in it), float32, bfloat16",
    )
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    parser.add_argument("--note", default="", help="a sentence added to the written section")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_one(args)))
        return
    dtypes = args.dtype.split(",")
    if not set(dtypes) <= {"auto", "float32", "bfloat16"}:
        parser.error(f"--dtype: {args.dtype!r}; each of auto, float32, bfloat16")
    load = os.getloadavg()[0]
    results = []
    pairs = (
        [tuple(run.split(":")) for run in args.runs.split(",")]
        if args.runs
        else [(shape, mode) for shape in args.shape.split(",") for mode in args.modes.split(",")]
    )
    with tempfile.TemporaryDirectory() as tmp:
        for shape, mode in pairs:
            for dtype in dtypes:  # side by side: each shape and mode in every dtype before the next
                base = Path(tmp) / f"{shape}-{dtype}"
                if not base.exists():
                    build_base(base, shape, args.vocab, args.hidden, dtype)
                results.append(run_child(args, shape, mode, base, dtype))
                print(json.dumps(results[-1]), file=sys.stderr)
    body = (
        f"Random-weight Qwen2 models through `training.recipes.sft.build_trainer` (template rendering, TRL "
        f"SFTTrainer, PEFT LoRA r=16 on all linear layers, or full), one repeated tool-call record of "
        f"{results[0]['seq']} tokens of which {results[0]['loss_tokens_per_row']} are in the loss (the "
        f"assistant call + `<|im_end|>`; the tokenizer is the demo's, {args.vocab} tokens, also for the Qwen "
        f"shapes, whose models keep Qwen's 151936-row embeddings and head), {args.warmup_steps} warm-up steps "
        f"then {args.steps} timed. "
        f"Supervised tok/s = loss tokens / wall time; total = every token. Peak memory: "
        f"{'CUDA max allocated' if args.device == 'cuda' else 'process max RSS'}. "
        f"Load average before the run: {load:.2f}.\n\n{table(results)}\n\n{args.note}\n"
    )
    print(body)
    if args.write:
        shapes = ", ".join(dict.fromkeys(shape for shape, _ in pairs))
        kinds = f"; {', '.join(dtypes)}" if len(dtypes) > 1 else ""
        title = f"SFT throughput ({args.device}: {shapes}{kinds})"
        write_section(title, body, ("torch", "transformers", "trl", "peft"))


if __name__ == "__main__":
    main()
