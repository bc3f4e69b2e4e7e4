"""The engine's numpy sampler: greedy at (near) zero temperature, seeded draws that follow the
softmax, nucleus cut, and sampling restricted to a grammar's allowed ids."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from server.engines.sampling import GREEDY_BELOW, sample, softmax

LOGITS = np.array([0.5, 2.0, 1.0, -1.0, 1.9], dtype=np.float32)


@pytest.mark.parametrize("temperature", [0.0, 5e-324, 1e-300, 1e-38, GREEDY_BELOW / 2])
def test_a_temperature_too_small_to_scale_by_is_greedy_without_nan(temperature: float) -> None:
    # 5e-324 came from schemathesis: 1/t overflowed to inf and 0 * inf made the top logit NaN
    # (a RuntimeWarning, an error under pytest; a garbage token in production).
    rng = np.random.default_rng(0)
    assert {sample(LOGITS, temperature, 1.0, rng) for _ in range(50)} == {1}
    assert sample(LOGITS, temperature, 5e-324, rng, allowed=np.array([0, 2, 3])) == 2


def test_draws_follow_the_softmax_of_the_scaled_logits() -> None:
    rng = np.random.default_rng(1)
    n = 20_000
    counts = Counter(sample(LOGITS, 0.7, 1.0, rng) for _ in range(n))
    expected = softmax(LOGITS / np.float32(0.7))
    for token, p in enumerate(expected):
        assert abs(counts[token] / n - p) < 0.015, (token, counts[token] / n, p)


def test_top_p_keeps_the_smallest_set_reaching_p_and_allowed_ids_map_back() -> None:
    rng = np.random.default_rng(2)
    # p(1) = 0.39 and p(1) + p(4) = 0.75 at t=1: top_p 0.6 keeps exactly those two.
    drawn = {sample(LOGITS, 1.0, 0.6, rng) for _ in range(400)}
    assert drawn == {1, 4}
    allowed = np.array([3, 0])
    assert {sample(LOGITS, 1.0, 1.0, rng, allowed=allowed) for _ in range(400)} == {0, 3}
    assert sample(LOGITS, 1.0, 1.0, rng, allowed=np.array([3])) == 3
