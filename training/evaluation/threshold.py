"""A no-tool threshold calibrated for an adapter, on prompts that are not the test prompts.

In `auto` with a threshold, the gateway answers with text wherever the probability of opening a
call (the format's opener and the loose ones its models write, server/chat.py `_decide`) is below
it. A catalogue base's calibration is not its adapters' (docs/configuration.md), so an adapter
brings its own in its manifest. Here each prompt's probability is read exactly as the gateway
reads it: the embedded engine in this process, the base GGUF with the adapter's GGUF LoRA, the
gateway's own prompt and `call_probabilities`. The cut keeps the validation prompts that need a
call and vetoes those that need none, by Youden's rule (the largest share kept minus share let
through), the lowest such cut on a tie: a missed call costs as much as a false one here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from training.evaluation.items import EvalItem


@dataclass(frozen=True)
class Calibration:
    threshold: float | None  # None: no cut separates the two sets better than no cut at all
    kept: float  # share of the prompts needing a call at or above it
    vetoed: float  # share of the prompts needing none below it
    p_call: tuple[float, ...]  # P(opening a call) on the prompts that need one
    p_none: tuple[float, ...]  # ... and on those that need none


def pick_threshold(p_call: Sequence[float], p_none: Sequence[float]) -> Calibration:
    """Youden's cut between the two samples: the threshold t maximising share(p_call >= t) -
    share(p_none >= t), at the midpoint between neighbouring values, the lowest on a tie; None
    when no cut beats none (J = 0)."""
    if not p_call or not p_none:
        return Calibration(None, 1.0, 0.0, tuple(p_call), tuple(p_none))
    values = sorted(set(p_call) | set(p_none))
    cuts = [(a + b) / 2 for a, b in zip(values, values[1:], strict=False)]
    best, best_j = None, 0.0
    for cut in cuts:
        j = _share(p_call, cut) - _share(p_none, cut)
        if j > best_j + 1e-12:
            best, best_j = cut, j
    if best is None:
        return Calibration(None, 1.0, 0.0, tuple(p_call), tuple(p_none))
    return Calibration(round(best, 4), _share(p_call, best), 1 - _share(p_none, best), tuple(p_call), tuple(p_none))


def _share(values: Sequence[float], cut: float) -> float:
    return sum(v >= cut for v in values) / len(values)


def open_probabilities(
    gguf: Path, adapters: Path, name: str, items: Sequence[EvalItem], threads: int | None = None
) -> list[float]:
    """P(opening a call) for each item's prompt, as the gateway's `auto` reads it, for the model
    served as `name` ("base", or an adapter folder's name under `adapters`)."""
    return asyncio.run(_open_probabilities(gguf, adapters, name, items, threads))


async def _open_probabilities(
    gguf: Path, adapters: Path, name: str, items: Sequence[EvalItem], threads: int | None
) -> list[float]:
    from server.chat import ChatRequest, call_probabilities, prompt_for
    from server.config import load_settings
    from server.metrics import Metrics
    from server.serving.build import build_registry

    flags = {"model.path": str(gguf), "model.served_name": "base", "adapters.dir": str(adapters)}
    settings = load_settings(None, **flags, **({"model.threads": threads} if threads else {}))
    registry = build_registry(settings, Metrics())
    await registry.start()
    try:
        served = registry.get(name)
        out = []
        async with served.lease():  # the adapter loaded once, for every prompt
            for item in items:
                request = ChatRequest(messages=item.prompt.messages, tools=item.prompt.tools)
                out.append((await call_probabilities(served, prompt_for(served, request)))[1])
        return out
    finally:
        await registry.close()


def calibrate(
    gguf: Path, adapters: Path, name: str, items: Sequence[EvalItem], threads: int | None = None
) -> Calibration:
    """The threshold for `name` on `items` (validation prompts: never the ones it is scored on)."""
    probabilities = open_probabilities(gguf, adapters, name, items, threads)
    needs = [item.expected.expects_call for item in items]
    return pick_threshold(
        [p for p, n in zip(probabilities, needs, strict=True) if n],
        [p for p, n in zip(probabilities, needs, strict=True) if not n],
    )
