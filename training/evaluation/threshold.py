"""A no-tool threshold calibrated for an adapter, on prompts that are not the test prompts.

In `auto` with a threshold, the gateway answers with text wherever the probability of opening a
call (the format's opener and the loose ones its models write, server/chat.py `_decide`) is below
it. A catalogue base's calibration is not its adapters' (docs/configuration.md), so an adapter
brings its own in its manifest. Here each prompt's probability is read exactly as the gateway
reads it: the embedded engine in this process, the base GGUF with the adapter's GGUF LoRA, the
gateway's own prompt and `call_probabilities`. The cut keeps at least `KEEP` of the validation
prompts that need a call (the valid-call target: a call the model meant must come back as one)
and, within that, vetoes the most of those that need none, at the lowest cut that does. Youden's
rule (kept minus let through) was measured instead and rejected: where the adapter has not learnt
the decision it cuts at 0.9975 and loses a fifth of the calls (docs/demo.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.evaluation.items import EvalItem

KEEP = 0.97  # share of the validation calls a threshold must keep


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None: no cut keeps enough calls and vetoes anything
    kept: float  # share of the prompts needing a call at or above it
    vetoed: float  # share of the prompts needing none below it
    p_call: tuple[float, ...]  # P(opening a call) on the prompts that need one
    p_none: tuple[float, ...]  # ... and on those that need none


def pick_threshold(p_call: Sequence[float], p_none: Sequence[float], keep: float = KEEP) -> Calibration:
    """The cut between the two samples, at a midpoint between neighbouring values: of those keeping
    at least `keep` of `p_call` at or above it, the lowest of those vetoing the most of `p_none`;
    None when none keeps enough or vetoes anything."""
    if not p_call or not p_none:
        return Calibration(None, 1.0, 0.0, tuple(p_call), tuple(p_none))
    values = sorted(set(p_call) | set(p_none))
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)]
    allowed = [cut for cut in cuts if _share(p_call, cut) >= keep]
    most = max((1 - _share(p_none, cut) for cut in allowed), default=0.0)
    if most == 0:
        return Calibration(None, 1.0, 0.0, tuple(p_call), tuple(p_none))
    best = min(cut for cut in allowed if 1 - _share(p_none, cut) == most)
    return Calibration(round(best, 4), _share(p_call, best), most, tuple(p_call), tuple(p_none))


def _share(values: Sequence[float], cut: float) -> float:
    return sum(v >= cut for v in values) / len(values)


def open_probabilities(
    gguf: Path,
    names: Sequence[str],
    items: Sequence[EvalItem],
    adapters: Path | None = None,
    threads: int | None = None,
) -> dict[str, list[float]]:
    """P(opening a call) for each item's prompt, as the gateway's `auto` reads it, for each model
    served as one of `names` ("base", or an adapter folder's name under `adapters`): one
    registry, so the base GGUF is loaded once for all of them."""
    return asyncio.run(_open_probabilities(gguf, names, items, adapters, threads))


async def _open_probabilities(
    gguf: Path, names: Sequence[str], items: Sequence[EvalItem], adapters: Path | None, threads: int | None
) -> dict[str, list[float]]:
    from server.chat import ChatRequest, call_probabilities, prompt_for
    from server.config import load_settings
    from server.metrics import Metrics
    from server.serving.build import build_registry

    flags: dict[str, object] = {"model.path": str(gguf), "model.served_name": "base"}
    if adapters is not None:
        flags["adapters.dir"] = str(adapters)
    if threads:
        flags["model.threads"] = threads
    registry = build_registry(load_settings(None, **flags), Metrics())
    await registry.start()
    try:
        out: dict[str, list[float]] = {}
        for name in names:
            served = registry.get(name)
            async with served.lease():  # the adapter loaded once, for every prompt
                out[name] = []
                for item in items:
                    request = ChatRequest(messages=item.prompt.messages, tools=item.prompt.tools)
                    out[name].append((await call_probabilities(served, prompt_for(served, request)))[1])
        return out
    finally:
        await registry.close()


def calibrate(
    gguf: Path, adapters: Path, names: Sequence[str], items: Sequence[EvalItem], threads: int | None = None
) -> dict[str, Calibration]:
    """The threshold of each of `names` on `items` (validation prompts: never the ones it is
    scored on)."""
    needs = [item.expected.expects_call for item in items]
    out = {}
    for name, probabilities in open_probabilities(gguf, names, items, adapters, threads).items():
        pairs = list(zip(probabilities, needs, strict=True))
        out[name] = pick_threshold([p for p, n in pairs if n], [p for p, n in pairs if not n])
    return out
