"""Which tool-call format a chat template speaks, found by rendering probe conversations.

The template is asked to render a conversation holding one assistant call of a made-up tool
and its result; the text between the user's question and that result is how the family writes
calls. Detection is pure (no registry lookups) and never raises: a template that refuses the
probes, or shows no tool-call syntax at all, falls back to `json_envelope`, with the reason.
`resolve_format` turns a configured format name (or "auto") into the format to serve, and is
the one place that refuses an unknown or unimplemented one.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

from server.errors import ConfigError
from server.templates import render
from server.toolcalls import ToolFormat, format_names, get_format
from server.types import Message, Tool, ToolCall

FALLBACK = "json_envelope"
AUTO = "auto"  # model.tool_format: detect from the chat template
FormatSource = Literal["configured", "detected"]
_log = logging.getLogger("callgate")

# Distinctive words, so a marker found near them cannot come from the template's own prose.
PROBE_NAME = "zq_probe_lookup"
PROBE_ARG = "zq_probe_key"
PROBE_VALUE = "zq-probe-value"
PROBE_QUESTION = "zq probe question"
PROBE_RESULT = "zq probe result"
# Mistral's templates refuse call ids that are not 9 alphanumerics.
PROBE_ID = "zqProbe01"

PROBE_TOOL = Tool(
    name=PROBE_NAME,
    description="Probe tool used to detect the tool-call format.",
    parameters={"type": "object", "properties": {PROBE_ARG: {"type": "string"}}, "required": [PROBE_ARG]},
)
PROBE_CALL = ToolCall(name=PROBE_NAME, arguments=f'{{"{PROBE_ARG}": "{PROBE_VALUE}"}}', id=PROBE_ID)
_PYTHON_CALL = re.compile(re.escape(PROBE_NAME) + r"\(\s*" + re.escape(PROBE_ARG) + r"\s*=")


@dataclass(frozen=True)
class Detection:
    format: str
    reason: str


@dataclass(frozen=True)
class _Rule:
    """A format's signature: every needle is present. `in_instructions`: the needles are
    distinctive enough to trust in the tool instructions alone (a `"parameters"` key is not:
    every tool listing has one)."""

    format: str
    needles: tuple[str, ...]
    in_instructions: bool = True
    extra: Callable[[str], bool] | None = None

    def matches(self, text: str) -> bool:
        return all(n in text for n in self.needles) and (self.extra is None or self.extra(text))

    @property
    def label(self) -> str:
        return " + ".join(self.needles) if self.needles else "a python call"


# Order matters: more specific signatures first (Qwen3-Coder also wraps calls in <tool_call>).
RULES: tuple[_Rule, ...] = (
    _Rule("qwen3_coder", ("<function=",)),
    _Rule("granite", ("<|tool_call|>",)),
    _Rule("hermes", ("<tool_call>", '"arguments"')),
    _Rule("mistral_v11", ("[TOOL_CALLS]", "[ARGS]")),
    _Rule("mistral", ("[TOOL_CALLS]",)),
    _Rule("phi4_mini", ("functools[",)),
    _Rule("llama3_json", ("<|python_tag|>",)),
    _Rule("functionary_v3", (">>>",), in_instructions=False),
    _Rule("react", ("Action Input:",)),
    _Rule("llama3_json", ('"name"', '"parameters"'), in_instructions=False),
    _Rule("pythonic", (), in_instructions=False, extra=lambda text: bool(_PYTHON_CALL.search(text))),
)


def detect_format(template: str) -> Detection:
    """The tool-call format `template` renders calls in, and why it was chosen.

    Evidence, strongest first: the rendered probe call; the assistant turn around it when the
    call's arguments were not rendered (distinctive markers only); the tool instructions."""
    call_text, call_error = _render_call(template)
    if call_text is not None and PROBE_NAME in call_text:
        found = _match(call_text, distinctive_only=False)
        if found is not None:
            return Detection(found.format, f"an assistant tool call renders as {_snippet(call_text)} ({found.label})")
    elif call_text is not None:
        found = _match(call_text, distinctive_only=True)
        if found is not None:
            return Detection(
                found.format,
                f"the assistant's tool-call turn renders as {_snippet(call_text)} "
                f"({found.label}; the call itself is not rendered)",
            )
    return _from_instructions(template) or _fallback(call_text, call_error)


@lru_cache(maxsize=32)
def renders_tools(template: str) -> bool:
    """Whether `template` writes the tools into the prompt (else they must be put there for it)."""
    return _instructions(template) is not None


def _match(text: str, *, distinctive_only: bool) -> _Rule | None:
    return next((r for r in RULES if (r.in_instructions or not distinctive_only) and r.matches(text)), None)


def _from_instructions(template: str) -> Detection | None:
    instructions = _instructions(template)
    found = None if instructions is None else _match(instructions, distinctive_only=True)
    if found is None:
        return None
    return Detection(
        found.format,
        f"the tool instructions mention {found.label} "
        "(the template does not render assistant tool calls in a known syntax)",
    )


def _fallback(call_text: str | None, call_error: str) -> Detection:
    if call_text is None:
        why = f"the template refused every probe conversation ({call_error})"
    elif PROBE_NAME in call_text:
        why = f"an assistant tool call renders as {_snippet(call_text)}, which no known format matches"
    else:
        why = "the template shows no tool-call syntax (a base model's template?)"
    return Detection(FALLBACK, f"{why}; fell back to {FALLBACK} (set model.tool_format to override)")


def _render_call(template: str) -> tuple[str | None, str]:
    """The text from the end of the probe question to the probe result (or to the end), or
    None and the first error when the template refuses every variant of the conversation."""
    first_error = ""
    for messages, add_generation_prompt in _call_conversations():
        text, error = _try_render(template, messages, (PROBE_TOOL,), add_generation_prompt)
        if text is not None and PROBE_QUESTION in text:
            return _between(text, PROBE_QUESTION, PROBE_RESULT), ""
        first_error = first_error or error or "the probe question does not appear in the prompt"
    return None, first_error


def _call_conversations() -> list[tuple[list[Message], bool]]:
    """The probe conversation and gentler variants, for templates strict about content or roles."""
    question = Message("user", PROBE_QUESTION)
    result = Message("tool", PROBE_RESULT, tool_call_id=PROBE_ID, name=PROBE_NAME)
    variants: list[tuple[list[Message], bool]] = []
    for content in (None, ""):
        call = Message("assistant", content, tool_calls=(PROBE_CALL,))
        variants.append(([question, call, result], True))
        variants.append(([question, call], False))
    return variants


def _instructions(template: str) -> str | None:
    """What tools add to the prompt: the rendering with tools, when one without them differs."""
    question = [Message("user", PROBE_QUESTION)]
    with_tools, _ = _try_render(template, question, (PROBE_TOOL,), True)
    without, _ = _try_render(template, question, (), True)
    if with_tools is None or with_tools == without:
        return None
    return with_tools if without is None else _strip_common(with_tools, without)


def _strip_common(text: str, base: str) -> str:
    """`text` without the prefix and suffix it shares with `base`."""
    start = 0
    while start < min(len(text), len(base)) and text[start] == base[start]:
        start += 1
    end = 0
    while end < min(len(text), len(base)) - start and text[-1 - end] == base[-1 - end]:
        end += 1
    return text[start : len(text) - end]


def _try_render(
    template: str, messages: Sequence[Message], tools: Sequence[Tool], add_generation_prompt: bool
) -> tuple[str | None, str]:
    try:
        return render(template, messages, tools, add_generation_prompt=add_generation_prompt), ""
    except Exception as exc:  # noqa: BLE001 - any template may raise anything; detection must not
        return None, f"{type(exc).__name__}: {exc}"


def _between(text: str, start: str, end: str) -> str:
    after = text[text.rindex(start) + len(start) :]
    stop = after.find(end)
    return after if stop < 0 else after[:stop]


def _snippet(text: str, limit: int = 120) -> str:
    around = text.strip()
    at = around.find(PROBE_NAME)
    begin = max(0, at - limit // 2)
    piece = around[begin : begin + limit]
    return repr(("..." if begin else "") + piece + ("..." if begin + limit < len(around) else ""))


def resolve_format(configured: str, template: str) -> tuple[ToolFormat, FormatSource]:
    """The configured format, or with "auto" the one the chat template renders calls in."""
    known = format_names()
    if configured != AUTO:
        if configured not in known:
            raise ConfigError(f"unknown model.tool_format {configured!r}; use {AUTO!r} or one of: {', '.join(known)}")
        return get_format(configured), "configured"
    detection = detect_format(template)
    _log.info("tool format %s detected from the chat template: %s", detection.format, detection.reason)
    if detection.format not in known:
        raise ConfigError(
            f"the chat template uses the {detection.format!r} tool-call format ({detection.reason}), which "
            f"this gateway does not implement; set model.tool_format (--tool-format) to one of: {', '.join(known)}"
        )
    return get_format(detection.format), "detected"
