"""Token sampling over a logits vector: temperature and nucleus (top_p), seeded.

Kept in numpy, outside llama.cpp's sampler chain, so a grammar mask is applied in one place
and a seed reproduces a generation exactly. `allowed` restricts a draw to a grammar's mask; the
batching engine draws from the whole vocabulary first and uses the mask only when the grammar
refuses that draw (batching.py `_choose`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def sample(
    logits: NDArray[np.float32],
    temperature: float,
    top_p: float,
    rng: np.random.Generator,
    allowed: NDArray[np.intp] | None = None,
) -> int:
    if allowed is None:
        return _sample(logits, temperature, top_p, rng)
    if len(allowed) == 1:
        return int(allowed[0])
    return int(allowed[_sample(logits[allowed], temperature, top_p, rng)])


# Below this a temperature is greedy, as in vLLM (_SAMPLING_EPS). Sampling at t = 5e-324 would
# scale logits by 1/t = inf, and 0 * inf at the top logit is NaN: the draw would be garbage.
GREEDY_BELOW = 1e-5


def _sample(logits: NDArray[np.float32], temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature < GREEDY_BELOW:
        return int(np.argmax(logits))
    probs = np.exp((logits - logits.max()) * np.float32(1.0 / temperature))
    if top_p < 1.0:
        probs = _nucleus(probs / probs.sum(), top_p)
    cumulative = np.cumsum(probs)
    draw = rng.random() * cumulative[-1]
    return int(min(np.searchsorted(cumulative, draw, side="right"), len(probs) - 1))


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    shifted = np.exp(logits.astype(np.float64) - np.max(logits))
    result: NDArray[np.float64] = shifted / shifted.sum()
    return result


def _nucleus(probs: NDArray[np.float32], top_p: float) -> NDArray[np.float32]:
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return kept
