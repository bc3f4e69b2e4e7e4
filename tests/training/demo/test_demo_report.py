"""build-demo's report: the four numbers per model against the targets, accuracy per argument,
and where the time went."""

from __future__ import annotations

from training.demo.build import report_markdown


def test_the_report_puts_models_side_by_side_with_their_arguments() -> None:
    four = {"valid_call_rate": 0.9, "tool_name_accuracy": 0.75, "argument_match": 0.5, "false_call_rate": 0.04,
            "mean_reward": 0.8}  # fmt: skip
    report = {
        "scores": {
            "base": {**four, "argument_match": None, "by_argument": {}},
            "sft": {
                **four,
                "by_argument": {
                    "track_order.order_id": {"n": 40, "accuracy": 0.875},
                    "escalate.reason": {"n": 8, "accuracy": 0.25},
                },
            },
        },  # fmt: skip
        "exported": "sft",
        "seconds": {"base": 90.0, "sft": 30.0},
    }
    lines = report_markdown(report).splitlines()
    assert "| tool-name accuracy | 0.750 | 0.750 | >= 0.95 |" in lines
    assert "| argument match | - | 0.500 | >= 0.90 |" in lines
    assert "| mean reward (picks the export) | 0.800 | 0.800 | |" in lines
    assert "| `escalate.reason` | - | 0.25 (8) |" in lines
    assert "| `track_order.order_id` | - | 0.88 (40) |" in lines
    assert not any("through the gateway" in line for line in lines)
    assert lines[-1] == "Exported: the sft adapter. Build time 2.0 min: base 90 s, sft 30 s."


def test_the_gateway_table_follows_the_unconstrained_one_and_carries_the_arguments() -> None:
    four = {"valid_call_rate": 0.9, "tool_name_accuracy": 0.75, "argument_match": 0.5, "false_call_rate": 0.04}
    served = {**four, "valid_call_rate": 1.0, "by_argument": {"track_order.order_id": {"n": 10, "accuracy": 1.0}}}
    report = {
        "scores": {"sft": {**four, "by_argument": {"track_order.order_id": {"n": 9, "accuracy": 0.5}}}},
        "served": {"sft": served},
        "exported": "sft",
        "seconds": {"sft": 60.0},
    }
    text = report_markdown(report)
    unconstrained, gateway = text.index("unconstrained"), text.index("through the gateway")
    assert unconstrained < gateway
    assert "| valid-call rate | 1.000 | >= 0.97 |" in text[gateway:]
    assert "| `track_order.order_id` | 1.00 (10) |" in text  # the served arm's arguments


def test_the_export_goes_to_the_higher_mean_reward() -> None:
    from training.demo.build import _rank

    sft = {"argument_match": 0.50, "false_call_rate": 0.06, "mean_reward": 0.78}
    dpo = {"argument_match": 0.48, "false_call_rate": 0.02, "mean_reward": 0.80}
    assert _rank(dpo) > _rank(sft) and not _rank(sft) > _rank(dict(sft))


def test_a_reward_tie_goes_to_fewer_false_calls() -> None:
    from training.demo.build import _rank

    # the CI build of 258e853: SFT and DPO tied at 0.786, and SFT (0.071 false calls) was exported
    sft = {"argument_match": 0.515, "false_call_rate": 0.071, "mean_reward": 0.786}
    dpo = {"argument_match": 0.567, "false_call_rate": 0.045, "mean_reward": 0.786 + 1e-12}
    assert _rank(dpo) > _rank(sft)
    # max() keeps the first of equals: the build lists SFT first, so a full tie keeps SFT
    assert max({"sft": sft, "dpo": dict(sft)}.items(), key=lambda kv: _rank(kv[1]))[0] == "sft"
