"""The pure tool-call core: formats (render, parse, stream-parse, grammar envelope) and
validation. Imported by the gateway, the training module and outside users alike:

    from server.toolcalls import get_format
    parsed = get_format("hermes").parse(text)   # parsed.content, parsed.calls
"""

from __future__ import annotations

from server.errors import InvalidRequest
from server.toolcalls.base import (
    CallDone,
    Envelope,
    Parsed,
    ParsedCall,
    StreamEvent,
    StreamParser,
    TextDelta,
    ToolFormat,
)
from server.toolcalls.hermes import HermesFormat

_FORMATS: dict[str, ToolFormat] = {"hermes": HermesFormat()}


def get_format(name: str) -> ToolFormat:
    try:
        return _FORMATS[name]
    except KeyError:
        raise InvalidRequest(
            f"unknown tool-call format {name!r}; known formats: {', '.join(sorted(_FORMATS))}"
        ) from None


def format_names() -> list[str]:
    return sorted(_FORMATS)


__all__ = [
    "CallDone",
    "Envelope",
    "Parsed",
    "ParsedCall",
    "StreamEvent",
    "StreamParser",
    "TextDelta",
    "ToolFormat",
    "format_names",
    "get_format",
]
