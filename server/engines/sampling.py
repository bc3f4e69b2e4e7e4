"""Token sampling over a logits vector: temperature and nucleus (top_p), seeded.

Kept in numpy, outside llama.cpp's sampler chain, so a grammar mask is applied to the real
logits in one place and a seed reproduces a generation exactly on any engine that uses it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def sample(
    logits: NDArray[np.float32], temperature: float, top_p: float, rng: np.random.Generator
) -> int:
    if temperature <= 0.0:
        return int(np.argmax(logits))
    probs = softmax(logits / temperature)
    if top_p < 1.0:
        probs = _nucleus(probs, top_p)
    cumulative = np.cumsum(probs, dtype=np.float64)
    draw = rng.random() * cumulative[-1]
    return int(min(np.searchsorted(cumulative, draw, side="right"), len(probs) - 1))


def softmax(logits: NDArray[np.float32]) -> NDArray[np.float64]:
    finite = np.where(np.isfinite(logits), logits, -np.inf).astype(np.float64)
    shifted = np.exp(finite - np.max(finite))
    result: NDArray[np.float64] = shifted / shifted.sum()
    return result


def _nucleus(probs: NDArray[np.float64], top_p: float) -> NDArray[np.float64]:
    order = np.argsort(-probs, kind="stable")
    cumulative = np.cumsum(probs[order])
    keep = int(np.searchsorted(cumulative, top_p, side="left")) + 1
    kept = np.zeros_like(probs)
    kept[order[:keep]] = probs[order[:keep]]
    return kept
