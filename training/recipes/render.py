"""Canonical training records -> token ids and an assistant-only loss mask.

Prompts are rendered by the gateway's own renderer (server.templates) with the base model's chat
template and the record's tools, so a trained prompt is byte-for-byte a served one. Each assistant
turn's span is found by rendering prefixes (history + generation prompt vs history + the turn),
never by template markers, so templates without `{% generation %}` work. The loss covers the
assistant text and its end-of-turn text (e.g. `<|im_end|>`), trailing whitespace trimmed: the model
must learn to stop, and the newline after the end-of-turn is never generated. Knows nothing of
torch or trainers; the tokenizer is anything with transformers' fast-tokenizer call signature.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from server.errors import GatewayError
from server.toolcalls.prompting import detected_format, render_chat
from server.types import Message, Tool, ToolCall

ROLES = ("system", "user", "assistant", "tool")


class Tokenizer(Protocol):
    """The part of a transformers fast tokenizer this module uses."""

    bos_token: str | None
    eos_token: str | None

    def __call__(self, text: str, *, add_special_tokens: bool, return_offsets_mapping: bool) -> Any: ...


class RecordError(ValueError):
    """A record that cannot be trained on; `reason` is a short label for the skip counter."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class Example:
    """One training sequence: ids and a 0/1 mask (1 = in the loss), the columns TRL reads."""

    input_ids: list[int]
    assistant_masks: list[int]

    @property
    def n_loss(self) -> int:
        return sum(self.assistant_masks)


@dataclass
class RenderStats:
    """What happened to each record: kept, or skipped with a reason (never silently)."""

    records: int = 0
    kept: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "records": self.records,
            "kept": self.kept,
            "tokens": self.tokens,
            "loss_tokens": self.loss_tokens,
            "skipped": dict(self.skipped),
        }


# --- canonical record -> server.types --------------------------------------------------------


def record_messages(record: Mapping[str, Any]) -> tuple[list[Message], list[Tool], list[bool]]:
    """The record's messages and tools in the gateway's vocabulary, and for each message whether
    it is trained (assistant turns unless `"train": false`)."""
    raw = record.get("messages")
    if not isinstance(raw, list) or not raw:
        raise RecordError("no_messages", "a record needs a non-empty 'messages' list")
    messages = [to_message(m) for m in raw]
    trained = [m.role == "assistant" and r.get("train", True) is not False for m, r in zip(messages, raw, strict=True)]
    return messages, to_tools(record.get("tools") or []), trained


def to_message(raw: Any) -> Message:
    if not isinstance(raw, Mapping) or raw.get("role") not in ROLES:
        raise RecordError("bad_message", f"each message needs a role in {ROLES}")
    content = raw.get("content")
    if content is not None and not isinstance(content, str):
        raise RecordError("bad_message", "content must be a string or null")
    calls = tuple(_to_call(c) for c in raw.get("tool_calls") or [])
    return Message(
        role=raw["role"], content=content, tool_calls=calls, tool_call_id=raw.get("tool_call_id"), name=raw.get("name")
    )


def _to_call(raw: Any) -> ToolCall:
    fn = raw.get("function") if isinstance(raw, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise RecordError("bad_tool_call", "tool_calls[].function.name is required")
    args = fn.get("arguments", {})
    # Canonical records hold arguments as objects; the gateway's ToolCall holds JSON text.
    text = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(name=fn["name"], arguments=text, id=str(raw.get("id") or ""))


def to_tools(raw: Sequence[Any]) -> list[Tool]:
    tools = []
    for item in raw:
        fn = item.get("function") if isinstance(item, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise RecordError("bad_tool", "tools[].function.name is required")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        tools.append(Tool(name=fn["name"], description=fn.get("description") or "", parameters=params))
    return tools


# --- text spans -------------------------------------------------------------------------------


def template_render(
    template: str,
    messages: Sequence[Message],
    tools: Sequence[Tool],
    tokenizer: Tokenizer,
    *,
    add_generation_prompt: bool,
) -> str:
    try:
        return render_chat(
            template,
            detected_format(template),
            messages,
            tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=tokenizer.bos_token or "",
            eos_token=tokenizer.eos_token or "",
        )
    except GatewayError as exc:
        raise RecordError("template_refused", str(exc)) from None


def assistant_text(
    template: str, history: Sequence[Message], tools: Sequence[Tool], reply: Message, tokenizer: Tokenizer
) -> tuple[str, str]:
    """(prompt, continuation): the prompt the gateway would send for `history`, and the text the
    model must generate for `reply`, end-of-turn included, trailing whitespace trimmed."""
    prompt = template_render(template, history, tools, tokenizer, add_generation_prompt=True)
    full = template_render(template, [*history, reply], tools, tokenizer, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise RecordError("prefix_mismatch", "the template renders the history differently before a reply")
    return prompt, full[len(prompt) :].rstrip()


def assistant_spans(
    template: str, messages: Sequence[Message], tools: Sequence[Tool], trained: Sequence[bool], tokenizer: Tokenizer
) -> tuple[str, list[tuple[int, int]]]:
    """The whole conversation's text and the [start, end) character spans of its trained turns."""
    text = template_render(template, messages, tools, tokenizer, add_generation_prompt=False)
    spans = []
    for i, train in enumerate(trained):
        if not train:
            continue
        prompt, reply = assistant_text(template, messages[:i], tools, messages[i], tokenizer)
        start, end = len(prompt), len(prompt) + len(reply)
        if text[:end] != prompt + reply:  # e.g. a template that renders past turns differently
            raise RecordError("prefix_mismatch", f"assistant turn {i} renders differently inside the conversation")
        spans.append((start, end))
    return text, spans


# --- tokens -----------------------------------------------------------------------------------


def tokenize_spans(text: str, spans: Sequence[tuple[int, int]], tokenizer: Tokenizer) -> Example:
    """Token ids of `text` and a mask that is 1 on every token starting inside a span."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    mask = [0] * len(ids)
    for k, (start, _end) in enumerate(enc["offset_mapping"]):
        mask[k] = int(any(s <= start < e for s, e in spans))
    return Example(input_ids=ids, assistant_masks=mask)


def render_record(record: Mapping[str, Any], template: str, tokenizer: Tokenizer) -> Example:
    """One record as an Example; RecordError when it cannot be trained on."""
    messages, tools, trained = record_messages(record)
    if not any(trained):
        raise RecordError("no_trained_turn", "no assistant message with train != false")
    text, spans = assistant_spans(template, messages, tools, trained, tokenizer)
    example = tokenize_spans(text, spans, tokenizer)
    if example.n_loss == 0:
        raise RecordError("empty_mask", "the trained turns cover no token")
    return example


def render_records(
    records: Iterable[Mapping[str, Any]], template: str, tokenizer: Tokenizer, max_len: int
) -> tuple[list[Example], RenderStats]:
    """Every record that fits in `max_len` tokens. Longer ones are dropped, not truncated: cutting
    the end loses the end-of-turn the model must learn, cutting the start loses the tools."""
    stats = RenderStats()
    examples = []
    for record in records:
        stats.records += 1
        try:
            example = render_record(record, template, tokenizer)
        except RecordError as exc:
            stats.skipped[exc.reason] += 1
            continue
        if len(example.input_ids) > max_len:
            stats.skipped["too_long"] += 1
            continue
        stats.kept += 1
        stats.tokens += len(example.input_ids)
        stats.loss_tokens += example.n_loss
        examples.append(example)
    return examples, stats


# --- preference pairs --------------------------------------------------------------------------


@dataclass(frozen=True)
class PairText:
    """A DPO pair as text: the served prompt, and each answer as the model must generate it."""

    prompt: str
    chosen: str
    rejected: str


def render_pair(pair: Mapping[str, Any], template: str, tokenizer: Tokenizer) -> PairText:
    """Prompt = the pair's messages under the template with the generation prompt; chosen and
    rejected = the continuation text of each assistant message, end-of-turn included."""
    messages, tools, _ = record_messages({"messages": pair.get("messages"), "tools": pair.get("tools")})
    answers = []
    for key in ("chosen", "rejected"):
        reply = to_message(pair.get(key))
        if reply.role != "assistant":
            raise RecordError("bad_pair", f"{key} must be an assistant message")
        prompt, text = assistant_text(template, messages, tools, reply, tokenizer)
        answers.append(text)
    if answers[0] == answers[1]:
        raise RecordError("same_answer", "chosen and rejected render to the same text")
    return PairText(prompt=prompt, chosen=answers[0], rejected=answers[1])


def render_pairs(
    pairs: Iterable[Mapping[str, Any]], template: str, tokenizer: Tokenizer, max_len: int
) -> tuple[list[PairText], RenderStats]:
    """Every pair whose prompt plus longer answer fits in `max_len` tokens (longer: dropped, counted)."""
    stats = RenderStats()
    kept = []
    for pair in pairs:
        stats.records += 1
        try:
            text = render_pair(pair, template, tokenizer)
        except RecordError as exc:
            stats.skipped[exc.reason] += 1
            continue
        n_prompt = _n_tokens(text.prompt, tokenizer)
        n_answer = max(_n_tokens(text.prompt + a, tokenizer) for a in (text.chosen, text.rejected)) - n_prompt
        if n_prompt + n_answer > max_len:
            stats.skipped["too_long"] += 1
            continue
        stats.kept += 1
        stats.tokens += n_prompt + n_answer
        kept.append(text)
    return kept, stats


def _n_tokens(text: str, tokenizer: Tokenizer) -> int:
    return len(tokenizer(text, add_special_tokens=False, return_offsets_mapping=False)["input_ids"])
