"""The adapter stages' batches: an effective batch reached by gradient accumulation."""

from __future__ import annotations

from training.demo.build import DemoConfig, _batches


def test_micro_batches_keep_the_effective_batch() -> None:
    assert _batches(8, 2) == (2, 4)
    assert _batches(8, 8) == (8, 1) and _batches(2, 2) == (2, 1)
    assert _batches(6, 4) == (6, 1)  # no uneven split: the whole batch per pass
    assert _batches(8, 0) == (8, 1)  # 0 turns accumulation off
    assert DemoConfig().micro_batch == 2
