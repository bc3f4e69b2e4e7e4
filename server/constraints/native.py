"""The constraint for engines whose upstream enforces GBNF itself (llama-server): the same
modes as the Lark grammar, emitted by gbnf.py, cached. In `auto` with plain text it is lazy:
text is free until the model writes the call opener (the trigger), and from the opener on it
must be calls, the grammar of `required`. Text still cannot hold the opener without starting a
call, so the calls are those of the full `auto` grammar, at no grammar cost on text tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from server.bytecache import ByteLRU
from server.constraints.compiler import cache_key
from server.constraints.gbnf import to_gbnf
from server.constraints.spec import ConstraintSpec
from server.toolcalls.base import ToolFormat
from server.types import ChoiceMode, ToolChoice


@dataclass(frozen=True)
class NativeConstraint:
    gbnf: str
    triggers: tuple[str, ...] = ()  # non-empty: lazy, applied from the first trigger on


class _Unconstrained:
    """Cached None (the cache's own None means a miss)."""


# Bounded in bytes, not entries: the GBNF of a large tool list is large.
_cache: ByteLRU[str, NativeConstraint | _Unconstrained] = ByteLRU(
    16 << 20, lambda key, c: len(key) + (len(c.gbnf) if isinstance(c, NativeConstraint) else 0) + 256
)


def cached_native(spec: ConstraintSpec, fmt: ToolFormat) -> tuple[NativeConstraint | None] | None:
    """(what native_constraint returns,) when it is cached (microseconds), else None."""
    found = _cache.get(cache_key(spec, fmt))
    if found is None:
        return None
    return (found if isinstance(found, NativeConstraint) else None,)


def native_constraint(spec: ConstraintSpec, fmt: ToolFormat) -> NativeConstraint | None:
    """GBNF enforcing `spec` in `fmt`'s layout, or None when unconstrained. Raises like
    compile_constraint (UnsupportedFeature names what GBNF cannot express)."""
    key = cache_key(spec, fmt)
    found = _cache.get(key)
    if found is None:
        found = _build(spec, fmt) or _Unconstrained()
        _cache.put(key, found)
    return found if isinstance(found, NativeConstraint) else None


def _build(spec: ConstraintSpec, fmt: ToolFormat) -> NativeConstraint | None:
    if lazy_applies(spec, fmt):
        # The opener as text: GBNF text matches the special token's text too, so the grammar also
        # takes over when a model spells the opener with ordinary tokens (the trigger sees both).
        opener = fmt.envelope.open
        calls_only = replace(
            spec, choice=ToolChoice(ChoiceMode.REQUIRED), special_tokens=spec.special_tokens - {opener}
        )
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
