"""The no-tool threshold calibrated for an adapter (training/evaluation/threshold.py): Youden's cut
between the probabilities of opening a call on prompts that need one and on prompts that need
none, read through the gateway's own engine, prompt and `call_probabilities`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.training_records import MULTI_TURN, NO_TOOL, PARALLEL, SINGLE
from training.data.records import parse_record
from training.evaluation.items import record_item
from training.evaluation.threshold import calibrate, pick_threshold


def test_separable_samples_are_cut_between_them() -> None:
    cal = pick_threshold([0.9, 0.8, 0.7], [0.1, 0.3, 0.5])
    assert 0.5 < cal.threshold < 0.7  # type: ignore[operator]
    assert (cal.kept, cal.vetoed) == (1.0, 1.0)


def test_the_cut_keeps_the_calls_and_then_vetoes_the_most() -> None:
    p_call = [0.95, 0.9, 0.85, 0.6, 0.4]
    p_none = [0.88, 0.5, 0.3, 0.2, 0.1, 0.05]

    def kept(t: float) -> float:
        return sum(p >= t for p in p_call) / len(p_call)

    def vetoed(t: float) -> float:
        return sum(p < t for p in p_none) / len(p_none)

    grid = [k / 1000 for k in range(1001)]
    for keep in (1.0, 0.8, 0.6):
        cal = pick_threshold(p_call, p_none, keep)
        assert cal.threshold is not None and kept(cal.threshold) >= keep
        assert (cal.kept, cal.vetoed) == (pytest.approx(kept(cal.threshold)), pytest.approx(vetoed(cal.threshold)))
        assert cal.vetoed == pytest.approx(max(vetoed(t) for t in grid if kept(t) >= keep))
        # The lowest such cut: any cut between the same two neighbouring values is the same cut;
        # below the lower one, fewer prompts are vetoed.
        below = max(p for p in (*p_call, *p_none) if p < cal.threshold)
        assert all(vetoed(t) < cal.vetoed for t in grid if t <= below)
    # Keeping every call (0.4 is one) vetoes only what lies under 0.4; keeping 0.6 of them, all but
    # the 0.88, which no cut keeping 0.6 reaches: at the lowest cut that does (above 0.5, not 0.85).
    assert pick_threshold(p_call, p_none, 1.0).threshold == pytest.approx(0.35)
    assert pick_threshold(p_call, p_none, 0.6).threshold == pytest.approx(0.55)


def test_no_cut_when_nothing_separates() -> None:
    assert pick_threshold([0.2, 0.6], [0.7, 0.9]).threshold is None  # calls below the no-calls
    # Where the adapter gives irrelevant requests the calls' probability, no cut keeps the calls.
    assert pick_threshold([0.995, 0.999, 0.999, 0.76], [0.99, 0.998, 0.1], keep=1.0).vetoed == pytest.approx(1 / 3)
    assert pick_threshold([0.5, 0.5], [0.5]).threshold is None
    assert pick_threshold([], [0.5]).threshold is None
    assert pick_threshold([0.5], []).threshold is None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_probabilities_are_read_as_the_gateway_reads_them(tiny_model: Any, tmp_path: Path) -> None:
    from peft import LoraConfig

    from tests.support.lora_helpers import ALL_LINEAR, make_peft_adapter
    from training.export.adapter import export_adapter

    adapters = tmp_path / "adapters"
    peft = make_peft_adapter(tiny_model, LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR), tmp_path / "p", 1)
    export_adapter(peft, tiny_model.hf_dir, "tuned", adapters)
    gguf = Path(tiny_model.gguf)
    items = [record_item(parse_record(r)) for r in (SINGLE, PARALLEL, MULTI_TURN, NO_TOOL)]
    # "base" is read last, after the adapter in the same registry (the second reading wins).
    cals = calibrate(gguf, adapters, ["base", "tuned", "base"], items, threads=1)
    base, tuned = cals["base"], cals["tuned"]
    needs = [item.expected.expects_call for item in items]
    assert len(base.p_call) == sum(needs) and len(base.p_none) == len(items) - sum(needs)
    assert all(0.0 <= p <= 1.0 for p in (*base.p_call, *base.p_none))
    # ... and equals a fresh registry's reading: the adapter does not stay applied to the base
    # (up to llama.cpp's float noise between a reused and a fresh prompt cache, ~3e-4 relative).
    again = calibrate(gguf, adapters, ["base"], items, threads=1)["base"]
    assert again.p_call == pytest.approx(base.p_call, rel=1e-3)
    assert again.p_none == pytest.approx(base.p_none, rel=1e-3)
    # The adapter's GGUF LoRA is applied: its probabilities are its own, not the base's.
    assert tuned.p_call != pytest.approx(base.p_call, rel=1e-3)
    with pytest.raises(Exception, match="not served"):
        calibrate(gguf, adapters, ["no-such-adapter"], items, threads=1)
