"""Every file in grammars/ compiled by the real engines and checked, in every tool_choice mode, on
its format's own renderings it must accept and on what it must reject (another function in named
mode, a second call without parallel calls, text in required, the opener in none): .lark through
llguidance, .gbnf through llama.cpp's own grammar sampler. The tokenizer is a byte-level BPE
trained here (the envelope markers as special tokens, or as plain text), so tokens span lexeme
boundaries as with a real model.
"""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import llguidance
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from server.constraints import ConstraintSpec, compile_constraint, to_gbnf
from server.constraints.compiler import GRAMMARS_DIR
from server.toolcalls import ToolFormat, format_names, get_format
from server.types import ChoiceMode, TextFormat, Tool, ToolCall, ToolChoice


def _formats_by_file() -> dict[str, ToolFormat]:
    """Each format's Lark envelope file and its GBNF sibling."""
    found: dict[str, ToolFormat] = {}
    for fmt in map(get_format, format_names()):
        lark = Path(fmt.envelope.grammar_file)
        found[lark.name] = found[lark.with_suffix(".gbnf").name] = fmt
    return found


FORMATS = _formats_by_file()
# The formats' markers that are special tokens in their families' vocabularies (and can be named).
MARKERS = ("<tool_call>", "</tool_call>", "<|tool_call|>")
EOS = "<|im_end|>"
WEATHER = Tool(
    "get_weather",
    parameters={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
PING = Tool("ping")
PARIS = ToolCall("get_weather", '{"city": "Paris", "days": 3}')
PING_CALL = ToolCall("ping", "{}")
CORPUS = [
    *(get_format(name).render("Let me check.", [PARIS, PING_CALL]) for name in format_names()),
    "Hello! The weather in Paris is nice today, thanks for asking.",
]


def cases(fmt: ToolFormat) -> list[tuple[str, bool, str, bool]]:
    """(mode, parallel, whole output, accepted?) for `fmt`, from its own renderings."""
    render = fmt.render
    one, two = render(None, [PARIS]), render(None, [PARIS, PING_CALL])
    text = render("Hello there", [])
    return [
        ("auto", True, text, True),
        ("auto", True, render("", []), bool(render("", [])) or not fmt.envelope.reply[0]),  # an empty answer
        ("auto", True, one, True),
        ("auto", True, render("Let me check.", [PARIS]), True),
        ("auto", True, two, True),
        ("auto", False, two, False),
        ("auto", True, fmt.envelope.open + "x", False),
        ("auto", True, one + " done", False),
        ("auto", True, one[:-4], False),
        ("auto", True, render(None, [ToolCall("get_weather", '{"city": "Paris", "mood": 1}')]), False),
        ("auto", True, render(None, [ToolCall("get_weather", '{"days": 3}')]), False),
        ("auto", True, render(None, [ToolCall("get_weather", '{"city": 3}')]), False),
        ("auto", True, render(None, [ToolCall("get_time", "{}")]), False),
        ("none", True, text, True),
        ("none", True, one, False),
        ("none", True, fmt.envelope.open + "x", False),
        ("required", True, one, True),
        ("required", True, two, True),
        ("required", True, text, False),
        ("required", False, two, False),
        ("named", True, render(None, [PING_CALL]), True),
        ("named", True, one, False),
        ("named", True, render(None, [PING_CALL, PING_CALL]), False),
    ]


def grammar_files() -> list[Path]:
    return sorted(p for p in GRAMMARS_DIR.iterdir() if p.is_file())


def spec(mode: str, parallel: bool, special: bool) -> ConstraintSpec:
    choice = ToolChoice(ChoiceMode(mode), "ping" if mode == "named" else None)
    markers = frozenset(MARKERS) if special else frozenset()
    return ConstraintSpec((WEATHER, PING), choice, parallel, TextFormat(), markers)


@pytest.fixture(scope="module", params=[True, False], ids=["special-markers", "text-markers"])
def tokenizer(request: pytest.FixtureRequest) -> tuple[Tokenizer, bool]:
    special = [EOS, *MARKERS] if request.param else [EOS]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=special, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(CORPUS * 10, trainer)
    return tok, bool(request.param)


def test_every_grammar_file_has_a_format() -> None:
    assert grammar_files(), "grammars/ is empty"
    unclaimed = {p.name for p in grammar_files()} - set(FORMATS)
    assert not unclaimed, f"no tool-call format's envelope uses {unclaimed}"


@pytest.mark.parametrize("path", [p for p in grammar_files() if p.suffix == ".lark"], ids=lambda p: p.name)
def test_lark_file_with_llguidance(path: Path, tokenizer: tuple[Tokenizer, bool]) -> None:
    tok, special = tokenizer
    engine = llguidance.LLTokenizer(tok.to_str(), eos_token=_eos(tok))
    for mode, parallel, text, expected in cases(FORMATS[path.name]):
        lark = compile_constraint(spec(mode, parallel, special), FORMATS[path.name]).lark
        assert lark is not None
        matcher = llguidance.LLMatcher(engine, lark, log_level=0)
        assert not matcher.is_error(), matcher.get_error()
        whole = matcher.consume_tokens(tok.encode(text).ids) and matcher.is_accepting()
        assert whole is expected, (mode, parallel, text)


@pytest.mark.parametrize("path", [p for p in grammar_files() if p.suffix == ".gbnf"], ids=lambda p: p.name)
def test_gbnf_file_with_llama_cpp(path: Path, tokenizer: tuple[Tokenizer, bool], tmp_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    tok, special = tokenizer
    with _vocab(llama_cpp, tok, tmp_path / "vocab.gguf") as vocab:
        for mode, parallel, text, expected in cases(FORMATS[path.name]):
            gbnf = to_gbnf(spec(mode, parallel, special), FORMATS[path.name])
            got = _llama_accepts(llama_cpp, vocab, gbnf, tok.encode(text).ids, _eos(tok))
            assert got is expected, (mode, parallel, text)


def _eos(tok: Tokenizer) -> int:
    eos = tok.token_to_id(EOS)
    assert eos is not None
    return eos


def _llama_accepts(llama_cpp: Any, vocab: Any, gbnf: str, ids: list[int], eos: int) -> bool:
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    assert sampler, "llama.cpp could not parse the grammar (its message is on stderr)"
    try:
        for token in ids:
            if not _allowed(llama_cpp, sampler, token):
                return False
            llama_cpp.llama_sampler_accept(sampler, token)
        return _allowed(llama_cpp, sampler, eos)
    finally:
        llama_cpp.llama_sampler_free(sampler)


def _allowed(llama_cpp: Any, sampler: Any, token: int) -> bool:
    # Accepting a token the grammar refuses aborts inside llama.cpp: ask the mask first.
    cell = (llama_cpp.llama_token_data * 1)()
    cell[0].id, cell[0].logit, cell[0].p = token, 0.0, 0.0
    data = llama_cpp.llama_token_data_array(data=cell, size=1, selected=-1, sorted=False)
    llama_cpp.llama_sampler_apply(sampler, ctypes.byref(data))
    return bool(cell[0].logit != -math.inf)


@contextmanager
def _vocab(llama_cpp: Any, tok: Tokenizer, path: Path) -> Iterator[Any]:
    """A vocabulary-only GGUF of `tok`, loaded by llama.cpp (grammars need it for token refs)."""
    _write_vocab_gguf(tok, path)
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, "llama.cpp refused the vocabulary GGUF"
    try:
        yield llama_cpp.llama_model_get_vocab(model)
    finally:
        llama_cpp.llama_model_free(model)


def _write_vocab_gguf(tok: Tokenizer, path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    data = json.loads(tok.to_str())
    tokens, types = _tokens(data, tok.get_vocab_size(), gguf)
    writer = gguf.GGUFWriter(str(path), "llama")
    for add, value in _HPARAMS:
        getattr(writer, add)(value)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
    writer.add_eos_token_id(_eos(tok))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


_HPARAMS = [
    ("add_block_count", 1), ("add_context_length", 64), ("add_embedding_length", 8),
    ("add_feed_forward_length", 8), ("add_head_count", 1), ("add_head_count_kv", 1),
    ("add_layer_norm_rms_eps", 1e-5), ("add_rope_dimension_count", 8),
]  # fmt: skip


def _tokens(data: dict[str, Any], size: int, gguf: Any) -> tuple[list[str], list[Any]]:
    tokens, types = [""] * size, [gguf.TokenType.NORMAL] * size
    for text, index in data["model"]["vocab"].items():
        tokens[index] = text
    for added in data["added_tokens"]:
        tokens[added["id"]] = added["content"]
        types[added["id"]] = gguf.TokenType.CONTROL
    return tokens, types


@pytest.mark.parametrize("name", ["mistral", "mistral_v11"])
def test_control_tokens_without_a_name_are_referenced_by_id(name: str) -> None:
    """Mistral's `[TOOL_CALLS]` / `[ARGS]` are control tokens that grammars cannot name as
    `<...>`: with their ids from the engine, the grammar takes the model's own token and
    refuses the same text spelled with ordinary tokens."""
    fmt = get_format(name)
    markers = ["[TOOL_CALLS]", "[ARGS]"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=[EOS, *markers],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([fmt.render(None, [PARIS])] * 10, trainer)
    ids = tuple((m, tok.token_to_id(m)) for m in markers)
    spec = ConstraintSpec(
        (WEATHER, PING), ToolChoice(ChoiceMode.REQUIRED), False, TextFormat(), frozenset(markers), ids
    )
    lark = compile_constraint(spec, fmt).lark
    assert lark is not None and f"<[{tok.token_to_id('[TOOL_CALLS]')}]>" in lark
    engine = llguidance.LLTokenizer(tok.to_str(), eos_token=_eos(tok))
    call = fmt.render(None, [PARIS])
    special_ids = tok.encode(call).ids  # the tokenizer turns "[TOOL_CALLS]" into its control token
    assert tok.token_to_id("[TOOL_CALLS]") in special_ids
    matcher = llguidance.LLMatcher(engine, lark, log_level=0)
    assert matcher.consume_tokens(special_ids) and matcher.is_accepting()
    # The same text, its opener spelled with ordinary tokens ("[" then "TOOL_CALLS]"): refused.
    spelled = tok.encode("[").ids + tok.encode("TOOL_CALLS]").ids + tok.encode(call.removeprefix("[TOOL_CALLS]")).ids
    assert not llguidance.LLMatcher(engine, lark, log_level=0).consume_tokens(spelled)
