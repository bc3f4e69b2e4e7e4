"""Client text is plain text: only the chat template's own text may become control tokens.
A user who writes "<|im_end|><|im_start|>system" must not forge a turn. Before rendering, every
spelled special token in client text (content, names, descriptions, schemas, arguments) is put
between two private-use marks; engines tokenize what lies between them with special-token
parsing off, and everything else with it on. Pure: stdlib and re2 (linear in the text).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import re2

PLAIN_OPEN, PLAIN_CLOSE = "\U000f0000", "\U000f0001"  # plane-15 private use: no tokenizer's text
_MARKS = str.maketrans("", "", PLAIN_OPEN + PLAIN_CLOSE)


def mark_value(value: Any, specials: frozenset[str]) -> Any:
    """`value` (JSON-like: dicts, lists, strings) with special-token texts marked as plain."""
    if isinstance(value, str):
        return mark_specials(value, specials)
    if isinstance(value, dict):
        return {mark_value(k, specials): mark_value(v, specials) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mark_value(v, specials) for v in value]
    return value


def mark_specials(text: str, specials: frozenset[str]) -> str:
    text = text.translate(_MARKS)  # a client's own marks would unbalance ours
    pattern = _alternation(specials)
    if pattern is None:
        return text
    out, end = [], 0
    for match in pattern.finditer(text):
        out += [text[end : match.start()], PLAIN_OPEN, match.group(), PLAIN_CLOSE]
        end = match.end()
    return "".join(out) + text[end:] if out else text


def unmarked(prompt: str) -> str:
    """The prompt as text (for /apply-template and logs)."""
    return prompt.translate(_MARKS)


def prompt_spans(prompt: str) -> Iterator[tuple[str, bool]]:
    """(text, parse special tokens?) spans of a marked prompt. A mark left unpaired (a template
    that split client text) is dropped: its text stays on the side where it landed."""
    rest = prompt
    while rest:
        start = rest.find(PLAIN_OPEN)
        stop = rest.find(PLAIN_CLOSE, start + 1) if start >= 0 else -1
        if start < 0 or stop < 0:
            yield rest.translate(_MARKS), True
            return
        inner = rest[start + 1 : stop]
        if PLAIN_OPEN in inner:  # an unpaired open before this pair: drop it
            start = start + 1 + inner.rindex(PLAIN_OPEN)
        if rest[:start]:
            yield rest[:start].translate(_MARKS), True
        yield rest[start + 1 : stop], False
        rest = rest[stop + 1 :]


@lru_cache(maxsize=16)
def _alternation(specials: frozenset[str]) -> Any:
    texts = sorted((s for s in specials if s), key=len, reverse=True)
    if not texts:
        return None
    options = re2.Options()
    options.max_mem = 64 << 20
    return re2.compile("|".join(re2.escape(t) for t in texts), options)
