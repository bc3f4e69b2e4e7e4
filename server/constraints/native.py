"""The constraint for engines whose upstream enforces GBNF itself (llama-server): the same
modes as the Lark grammar, emitted by gbnf.py, cached. In `auto` with plain text it is lazy:
text is free until the model writes the call opener (the trigger), and from the opener on it
must be calls, the grammar of `required`. Text still cannot hold the opener without starting a
call, so the calls are those of the full `auto` grammar, at no grammar cost on text tokens.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, replace

from server.constraints.compiler import cache_key
from server.constraints.gbnf import to_gbnf
from server.constraints.spec import ConstraintSpec
from server.toolcalls.base import ToolFormat
from server.types import ChoiceMode, ToolChoice

_CAPACITY = 512


@dataclass(frozen=True)
class NativeConstraint:
    gbnf: str
    triggers: tuple[str, ...] = ()  # non-empty: lazy, applied from the first trigger on


_cache: OrderedDict[str, NativeConstraint | None] = OrderedDict()
_lock = threading.Lock()


def native_constraint(spec: ConstraintSpec, fmt: ToolFormat) -> NativeConstraint | None:
    """GBNF enforcing `spec` in `fmt`'s layout, or None when unconstrained. Raises like
    compile_constraint (UnsupportedFeature names what GBNF cannot express)."""
    key = cache_key(spec, fmt)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    built = _build(spec, fmt)
    with _lock:
        _cache[key] = built
        while len(_cache) > _CAPACITY:
            _cache.popitem(last=False)
    return built


def _build(spec: ConstraintSpec, fmt: ToolFormat) -> NativeConstraint | None:
    if lazy_applies(spec, fmt):
        # The opener as text: GBNF text matches the special token's text too, so the grammar also
        # takes over when a model spells the opener with ordinary tokens (the trigger sees both).
        opener = fmt.envelope.open
        calls_only = replace(
            spec, choice=ToolChoice(ChoiceMode.REQUIRED), special_tokens=spec.special_tokens - {opener})
        return NativeConstraint(to_gbnf(calls_only, fmt), (opener,))
    text = to_gbnf(spec, fmt)
    return NativeConstraint(text) if text else None


def lazy_applies(spec: ConstraintSpec, fmt: ToolFormat) -> bool:
    """`auto`, free text that may come before calls, and the opener as the only banned text:
    then "free text until the opener, calls from it" allows the calls the full grammar allows
    (whose text must also end with the format's separator before the opener)."""
    env = fmt.envelope
    return (
        spec.choice.mode is ChoiceMode.AUTO
        and bool(spec.tools)
        and spec.text.kind == "text"
        and env.text_sep is not None
        and env.reply == ("", "")
        and not env.json_reply
        and env.banned == (env.open,)
    )
