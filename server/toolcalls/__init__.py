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
from server.toolcalls.functionary import FunctionaryV3Format
from server.toolcalls.granite import GRANITE
from server.toolcalls.hermes import HermesFormat
from server.toolcalls.json_envelope import JsonEnvelopeFormat
from server.toolcalls.llama3_json import Llama3JsonFormat
from server.toolcalls.mistral import MISTRAL, MISTRAL_V11
from server.toolcalls.phi4_mini import PHI4_MINI
from server.toolcalls.pythonic import PythonicFormat
from server.toolcalls.qwen3_coder import Qwen3CoderFormat
from server.toolcalls.react import ReactFormat

_FORMATS: dict[str, ToolFormat] = {
    fmt.name: fmt
    for fmt in (
        HermesFormat(),
        Llama3JsonFormat(),
        MISTRAL,
        MISTRAL_V11,
        GRANITE,
        PHI4_MINI,
        FunctionaryV3Format(),
        JsonEnvelopeFormat(),
        Qwen3CoderFormat(),
        PythonicFormat(),
        ReactFormat(),
    )
}


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
