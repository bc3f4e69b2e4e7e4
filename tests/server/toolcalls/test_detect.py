"""Tool-call format detection from chat templates: each family's template maps to its format,
a template that refuses the probes or shows no tool syntax falls back with a reason, an
explicit setting wins, and every family template agrees with its registered format."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import load_settings
from server.errors import ConfigError
from server.metrics import Metrics
from server.serving.build import build_registry
from server.templates import render
from server.toolcalls import format_names, get_format
from server.toolcalls.detect import FALLBACK, Detection, detect_format, resolve_format
from server.types import Message, Tool, ToolCall
from tests.support.fakes import FakeEngine
from tests.support.families import FAMILIES, TEMPLATES_DIR, template_text


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_each_family_template_maps_to_its_format(family: str) -> None:
    detection = detect_format(template_text(family))
    assert detection.format == FAMILIES[family], detection.reason
    assert detection.reason


def test_every_template_file_is_in_the_table() -> None:
    assert {p.stem for p in TEMPLATES_DIR.glob("*.jinja")} == set(FAMILIES)


def test_the_tiny_models_own_template_is_hermes() -> None:
    text = (Path(__file__).resolve().parents[3] / "training" / "templates" / "hermes.jinja").read_text()
    assert detect_format(text).format == "hermes"


def test_reason_quotes_the_rendered_call() -> None:
    reason = detect_format(template_text("mistral_v11")).reason
    assert "[TOOL_CALLS]zq_probe_lookup[ARGS]" in reason and "[ARGS]" in reason


@pytest.mark.parametrize(
    "template, why",
    [
        ("{{ raise_exception('this template takes no probes') }}", "this template takes no probes"),
        ("{% for m in messages %}{{ m.content + 1 }}{% endfor %}", "concatenate"),  # a TypeError, not jinja2
        ("{% for m in messages %}", "does not parse"),
        ("{{ messages[99].role }}", "refused"),
    ],
)
def test_broken_templates_fall_back_with_a_reason(template: str, why: str) -> None:
    detection = detect_format(template)
    assert detection.format == FALLBACK
    assert why in detection.reason and "refused every probe" in detection.reason


def test_a_template_without_tool_syntax_is_a_base_model() -> None:
    detection = detect_format("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    assert detection == Detection(FALLBACK, detection.reason)
    assert "no tool-call syntax" in detection.reason


def test_a_template_refusing_tool_results_is_still_read() -> None:
    strict = template_text("hermes").replace(
        '{%- elif message.role == "tool" -%}', '{%- elif message.role == "tool" -%}{{ raise_exception("no tools") }}'
    )
    assert detect_format(strict).format == "hermes"


def test_instructions_alone_are_evidence_when_calls_are_not_rendered() -> None:
    template = (
        '{% if tools %}Call tools as <tool_call>{"name": ..., "arguments": ...}</tool_call>\n{% endif %}'
        "{% for m in messages %}{{ m.role }}: {{ m.content or '' }}\n{% endfor %}"
    )
    detection = detect_format(template)
    assert detection.format == "hermes" and "instructions" in detection.reason


def test_instructions_name_the_format_when_calls_render_as_bare_json() -> None:
    # Like some published Phi-4-mini templates: the prompt teaches functools[...], history shows bare JSON.
    template = (
        '{% if tools %}Reply with functools[{"name": ..., "arguments": ...}]\n{% endif %}'
        "{% for m in messages %}{% for c in m.tool_calls or [] %}{{ c.function | tojson }}{% endfor %}"
        "{{ m.content or '' }}\n{% endfor %}"
    )
    assert detect_format(template).format == "phi4_mini"


def test_a_call_turn_marker_counts_when_the_arguments_are_not_rendered() -> None:
    # Like an old Mistral template that writes [TOOL_CALLS] + the message's content, not its calls.
    template = (
        "{% for m in messages %}{% if m.tool_calls %}[TOOL_CALLS]{{ m.content | string }}"
        "{% else %}[INST]{{ m.content }}[/INST]{% endif %}{% endfor %}"
    )
    detection = detect_format(template)
    assert detection.format == "mistral" and "not rendered" in detection.reason


def test_unknown_call_syntax_falls_back_and_says_so() -> None:
    template = (
        "{% for m in messages %}{% for c in m.tool_calls or [] %}CALL {{ c.function.name }} "
        "WITH {{ c.function.arguments | tojson }}{% endfor %}{{ m.content or '' }}\n{% endfor %}"
    )
    detection = detect_format(template)
    assert detection.format == FALLBACK and "no known format matches" in detection.reason


# --- wiring: settings -> served format ----------------------------------------------------------


def _served(tmp_path: Path, family: str, tool_format: str | None):  # type: ignore[no-untyped-def]
    model = tmp_path / "model.gguf"
    model.write_bytes(b"")
    template = TEMPLATES_DIR / f"{family}.jinja"
    settings = load_settings(
        None, **{"model.path": model, "model.chat_template": template, "model.tool_format": tool_format}
    )
    return build_registry(settings, Metrics(), engine=FakeEngine()).default()


def test_auto_is_the_default_and_detects(tmp_path: Path) -> None:
    served = _served(tmp_path, "hermes", None)
    assert (served.format.name, served.provenance.format) == ("hermes", "detected")
    assert served.provenance.template.endswith("hermes.jinja")


def test_an_explicit_format_overrides_detection(tmp_path: Path) -> None:
    served = _served(tmp_path, "base", "hermes")  # detection alone would say json_envelope
    assert (served.format.name, served.provenance.format) == ("hermes", "configured")


def test_an_unknown_explicit_format_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown model.tool_format 'nope'.*hermes"):
        resolve_format("nope", template_text("hermes"))


def test_a_detected_format_this_build_lacks_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.toolcalls.detect.detect_format", lambda _: Detection("martian", "seen: >>>>"))
    with pytest.raises(ConfigError, match="'martian' tool-call format.*set model.tool_format"):
        resolve_format("auto", template_text("hermes"))


# --- each family template and its registered format agree on what a call looks like ------------

TOOL = Tool(
    "get_weather",
    "Weather for a city.",
    {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]},
)
CALL = ToolCall("get_weather", '{"city": "Paris", "days": 2}', id="call_abc123def456")
QUESTION = Message("user", "Weather in Paris?")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_template_renders_tools_calls_and_results(family: str) -> None:
    history = [
        QUESTION,
        Message("assistant", None, (CALL,)),
        Message("tool", "sunny, 21 C", tool_call_id=CALL.id, name=CALL.name),
    ]
    prompt = render(template_text(family), history, [TOOL])
    assert "sunny, 21 C" in prompt and "Paris" in prompt
    if family != "base":  # a base model's template shows neither tools nor calls
        assert prompt.count("get_weather") >= 2 and "Weather for a city." in prompt


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_template_and_format_agree_on_a_call(family: str) -> None:
    """What the template renders after its generation prompt parses, with the format, back to
    the call: the model is prompted with the same syntax the gateway constrains and parses."""
    name = FAMILIES[family]
    if name not in format_names():
        pytest.skip(f"format {name!r} is not registered yet")
    if family == "base":
        pytest.skip("a base model's template renders no calls")
    template = template_text(family)
    prompt = render(template, [QUESTION], [TOOL], add_generation_prompt=True)
    whole = render(template, [QUESTION, Message("assistant", None, (CALL,))], [TOOL], add_generation_prompt=False)
    assert whole.startswith(prompt), "the template's generation prompt is not a prefix of its assistant turn"
    parsed = get_format(name).parse(whole[len(prompt) :])
    assert [(c.name, c.arguments, c.error) for c in parsed.calls] == [(CALL.name, CALL.arguments, None)]
