"""An evaluation's metrics as a Markdown report with PNG bar charts (matplotlib, Agg backend).
Reads only the metrics dictionary that `training.evaluation.evaluate` writes to metrics.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

NUMBERS = (
    ("valid_call_rate", "valid-call rate"),
    ("tool_name_accuracy", "tool-name accuracy"),
    ("argument_match", "argument match"),
    ("false_call_rate", "false-call rate"),
)


def write_report(out: Path, metrics: dict[str, Any]) -> list[Path]:
    """report.md and plots/*.png in `out`; returns the files written."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written = [
        _bars(plots / "four_numbers.png", {"overall": metrics["overall"]}, "The four numbers"),
        _bars(plots / "by_group.png", metrics["by_group"], "The four numbers by group"),
    ]
    if metrics.get("bfcl"):
        written.append(_bfcl_chart(plots / "bfcl.png", metrics["bfcl"]["categories"]))
    report = out / "report.md"
    report.write_text(markdown(metrics), encoding="utf-8")
    return [report, *written]


def markdown(metrics: dict[str, Any]) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"Backend: `{_inline(metrics['backend'])}`  ",
        f"Sampling: `{_inline(metrics['sampling'])}`  ",
        f"Records: {metrics['overall']['records']}, answers refused or failed: {metrics['errors']}, "
        f"input lines skipped: {metrics['skipped']['count']}, {metrics['seconds']:.1f} s",
        "",
        "## The four numbers",
        "",
        *_four_table(metrics),
        "",
        "![The four numbers](plots/four_numbers.png)",
        "",
        "![By group](plots/by_group.png)",
        "",
    ]
    if metrics.get("by_argument"):
        lines += [
            "## Arguments",
            "",
            "On valid calls with the right names: how often each expected argument has its expected value.",
            "",
            "| argument | n | accuracy |",
            "|---|---:|---:|",
        ]
        lines += [f"| `{k}` | {row['n']} | {_pct(row['accuracy'])} |" for k, row in metrics["by_argument"].items()]
        lines.append("")
    if metrics.get("bfcl"):
        lines += ["## BFCL (AST)", "", "| category | n | accuracy |", "|---|---:|---:|"]
        for name, row in metrics["bfcl"]["categories"].items():
            lines.append(f"| {name} | {row['n']} | {_pct(row['accuracy'])} |")
        lines += [
            f"| **mean of categories** | | **{_pct(metrics['bfcl']['mean'])}** |",
            "",
            "![BFCL](plots/bfcl.png)",
            "",
        ]
    lines += ["## Definitions", "", DEFINITIONS]
    return "\n".join(lines) + "\n"


DEFINITIONS = """\
- valid-call rate: among records where a call is expected, the share whose answer holds at least
  one call, every call to a declared tool with arguments valid under its JSON Schema.
- tool-name accuracy: among records where a call is expected, the share whose called names equal
  the expected names (as multisets).
- argument match: among those with valid calls and the right names, the share whose arguments
  match (exactly after JSON normalisation, or BFCL-style against possible answers).
- false-call rate: among records where no call is expected, the share with any call.
- BFCL accuracy: BFCL's own rule per category (AST match; no call for irrelevance; any call for
  relevance), without schema validation, as BFCL scores."""


def _four_table(metrics: dict[str, Any]) -> list[str]:
    head = "| group | records | " + " | ".join(label for _, label in NUMBERS) + " | mean reward |"
    rows = [head, "|---|---:|" + "---:|" * (len(NUMBERS) + 1)]
    for name, four in [("**overall**", metrics["overall"]), *metrics["by_group"].items()]:
        cells = " | ".join(_pct(four[key]) for key, _ in NUMBERS)
        reward = "–" if four["mean_reward"] is None else f"{four['mean_reward']:.3f}"
        rows.append(f"| {name} | {four['records']} | {cells} | {reward} |")
    return rows


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _inline(value: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)


def _bars(path: Path, groups: dict[str, dict[str, Any]], title: str) -> Path:
    """Grouped bars: one group of four bars (the four numbers) per entry; missing values are gaps."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4))
    width = 0.8 / len(NUMBERS)
    for k, (key, label) in enumerate(NUMBERS):
        xs = [i + (k - (len(NUMBERS) - 1) / 2) * width for i in range(len(groups))]
        values = [100 * (g[key] or 0.0) for g in groups.values()]
        bars = ax.bar(xs, values, width, label=label)
        ax.bar_label(bars, labels=[_pct(g[key]) for g in groups.values()], fontsize="x-small", rotation=90, padding=2)
    ax.set_xticks(range(len(groups)), list(groups), rotation=20, ha="right")
    ax.set_ylim(0, 115)  # room for the labels above 100%
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend(fontsize="small", ncols=2)
    return save(fig, path)


def _bfcl_chart(path: Path, categories: dict[str, dict[str, Any]]) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(categories) + 2), 4))
    bars = ax.bar(list(categories), [100 * c["accuracy"] for c in categories.values()], color="tab:purple")
    ax.bar_label(bars, labels=[_pct(c["accuracy"]) for c in categories.values()], fontsize="small")
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy %")
    ax.set_title("BFCL accuracy by category")
    ax.tick_params(axis="x", rotation=30)
    return save(fig, path)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    return path
