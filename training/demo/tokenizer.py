"""The demo models' tokenizer: byte-level BPE trained with `tokenizers` on a built-in corpus.

Owns the special tokens, the pre-tokenization (Qwen2's regex, which llama.cpp knows as "qwen2",
so transformers and llama.cpp split text identically and every digit stays its own token), the
seeded synthetic training corpus, and writing tokenizer.json / tokenizer_config.json.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    ENDOFTEXT,
    IM_START,
    IM_END,
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

# Qwen2's tokenizer.json regex, byte for byte. llama.cpp runs a hand-expanded equivalent of it
# (its engine has no `(?i:...)`) when the GGUF says tokenizer.ggml.pre = "qwen2"; `\p{N}` alone
# is what makes every digit a separate pre-token, hence a separate token.
QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA_CPP_PRE = "qwen2"

DEFAULT_VOCAB_SIZE = 2048
CORPUS_SIZE = 3000


def train_tokenizer(
    vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = 0, corpus: Iterable[str] | None = None
) -> Tokenizer:
    """Train the byte-level BPE on `corpus` (default `sample_corpus(seed)`); ids 0..8 are the
    special tokens. The demo model passes its rendered training conversations, so the chat and
    tool boilerplate become few tokens and sequences stay short."""
    tokenizer = Tokenizer(models.BPE())
    # NFC as in Qwen2's own tokenizer.json: transformers 5 loads every qwen2 model through
    # Qwen2Tokenizer, which adds it whatever the file says, so the file says so too. llama.cpp
    # does not normalize: text must be NFC before it reaches llama.cpp for ids to match.
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(sample_corpus(seed) if corpus is None else corpus, trainer=trainer)
    return tokenizer


def save_tokenizer(tokenizer: Tokenizer, out_dir: Path, chat_template: str) -> None:
    """Write tokenizer.json and a tokenizer_config.json that transformers 4.x and 5.x load."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out_dir / "tokenizer.json"))
    config: dict[str, Any] = {
        # What transformers 5 loads for model_type qwen2 whatever is written here; the pipeline
        # it rebuilds (NFC, Qwen2 regex, ByteLevel) is the one tokenizer.json holds.
        "tokenizer_class": "Qwen2Tokenizer",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 4096,
        "chat_template": chat_template,
    }
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )


# --- the built-in corpus -------------------------------------------------------------------


def _table(text: str, sep: str = " ") -> tuple[str, ...]:
    return tuple(text.split(sep))


_WORDS = _table(
    "the a an to of and in for on with at by from is are was be can will please could would "
    "what when where which who how why weather forecast today tomorrow order status refund "
    "ticket flight hotel book cancel check find search send email message meeting calendar "
    "schedule reminder price stock convert currency translate time zone city country user "
    "account password reset delivery package tracking number address phone call me my your "
    "need want like know tell show list get set update create delete open close run file "
    "report summary data result error help thanks hello hi sure okay yes no not just also "
    "temperature rain sunny cloudy wind degrees celsius fahrenheit minutes hours days week"
)
_CITIES = _table(
    "Paris|London|Tokyo|New York|Zürich|São Paulo|München|Kraków|Reykjavík|Москва|東京|北京|"
    "서울|Αθήνα|القاهرة|Montréal",
    sep="|",
)
_UNICODE_BITS = _table(
    "café|naïve|résumé|coöperate|façade|jalapeño|Straße|smörgåsbord|你好世界|天气怎么样|"
    "こんにちは|ありがとう|안녕하세요|Привет мир|γειά σου|مرحبا|שלום|नमस्ते|🙂|👍|🚀|🎉|❤️|😂|"
    "✓|€|£|¥|°C|—|…|“quoted”|‘single’|½|×|→|•",
    sep="|",
)
_TOOLS = _table(
    "get_weather search_web send_email get_order_status book_flight create_event "
    "convert_currency get_stock_price translate_text set_reminder lookup_user cancel_order "
    "track_package calculate list_files"
)
_ARG_NAMES = _table(
    "city query to subject body order_id date time amount from currency symbol text "
    "target_lang user_id limit unit path expr"
)
_PUNCT = ".,;:!?-_()[]{}<>\"'`~@#$%^&*+=/\\|"
# Syllables for invented words: enough distinct pairs that BPE reaches the requested vocab.
_ONSETS = ("", *_table("b c d f g h l m n p r s t v w st tr pl ch sh th"))
_NUCLEI = _table("a e i o u ea ou ai y")
_CODAS = ("", "", *_table("n r s t l nd st ng ck ght tion ment ing ed er ly"))


def sample_corpus(seed: int, size: int = CORPUS_SIZE) -> list[str]:
    """A deterministic mix of prose, JSON tool calls, schemas, numbers, unicode and chats."""
    rng = random.Random(seed)
    makers: tuple[Callable[[random.Random], str], ...] = (
        _sentence,
        _sentence,
        _tool_call_json,
        _tool_schema_json,
        _numbers,
        _unicode_line,
        _punctuation_line,
        _chat,
    )
    return [rng.choice(makers)(rng) for _ in range(size)]


def word(rng: random.Random) -> str:
    """A real word most of the time, else an English-looking invented one."""
    if rng.random() < 0.6:
        return rng.choice(_WORDS)
    syllables = rng.randint(1, 3)
    return "".join(rng.choice(_ONSETS) + rng.choice(_NUCLEI) + rng.choice(_CODAS) for _ in range(syllables))


def _sentence(rng: random.Random) -> str:
    words = [word(rng) for _ in range(rng.randint(3, 16))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), rng.choice(_CITIES))
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
    text = " ".join(words)
    text = text[0].upper() + text[1:]
    if rng.random() < 0.2:
        text = text.replace(" is", "'s").replace(" not", "n't")
    return text + rng.choice((".", "?", "!", "", "...", " :)"))


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 2 else 5)
    if kind == 0:
        return rng.randint(-1000, 100000)
    if kind == 1:
        return round(rng.uniform(-100, 1000), rng.randint(1, 4))
    if kind == 2:
        return rng.choice((True, False, None))
    if kind == 3:
        return rng.choice(_CITIES + _UNICODE_BITS[:8])
    if kind == 4:
        return " ".join(word(rng) for _ in range(rng.randint(1, 5))) + rng.choice(("", "\n", "\t", '"', "\\", "/"))
    if kind == 5:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(_ARG_NAMES): _json_value(rng, depth + 1) for _ in range(rng.randint(1, 3))}


def _tool_call_json(rng: random.Random) -> str:
    args = {rng.choice(_ARG_NAMES): _json_value(rng) for _ in range(rng.randint(0, 4))}
    call = {"name": rng.choice(_TOOLS), "arguments": args}
    text = json.dumps(call, ensure_ascii=rng.random() < 0.3)
    return f"<tool_call>\n{text}\n</tool_call>" if rng.random() < 0.5 else text


def _tool_schema_json(rng: random.Random) -> str:
    props = {
        name: {"type": rng.choice(("string", "integer", "number", "boolean")), "description": name}
        for name in rng.sample(_ARG_NAMES, rng.randint(1, 4))
    }
    schema = {
        "type": "function",
        "function": {
            "name": rng.choice(_TOOLS),
            "description": _sentence(rng),
            "parameters": {"type": "object", "properties": props, "required": list(props)[:1]},
        },
    }
    return json.dumps(schema, indent=rng.choice((None, 2)))


def _numbers(rng: random.Random) -> str:
    parts = (
        f"{rng.randint(1, 31):02d}/{rng.randint(1, 12):02d}/{rng.randint(1990, 2030)}",
        f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
        f"${rng.randint(0, 9999)}.{rng.randint(0, 99):02d}",
        f"order {rng.randint(10000, 99999)}",
        f"+1-{rng.randint(200, 999)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        f"{rng.uniform(-90, 90):.4f}, {rng.uniform(-180, 180):.4f}",
        f"{rng.randint(0, 10**9)}",
        f"{rng.randint(1, 100)}%",
        f"v{rng.randint(0, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 99)}",
    )
    return " ".join(rng.sample(parts, rng.randint(1, 4)))


def _unicode_line(rng: random.Random) -> str:
    return " ".join(rng.choice(_UNICODE_BITS + _CITIES) for _ in range(rng.randint(1, 6)))


def _punctuation_line(rng: random.Random) -> str:
    pieces = ["".join(rng.choice(_PUNCT) for _ in range(rng.randint(1, 4))) for _ in range(5)]
    spaces = ("  ", "\t", "\n", "\n\n", "   ", " \n", "\r\n")
    return rng.choice(_WORDS) + "".join(p + rng.choice(spaces) for p in pieces)


def _chat(rng: random.Random) -> str:
    turns: Iterator[str] = (
        f"{IM_START}{role}\n{text}{IM_END}\n"
        for role, text in (
            ("system", "You are a helpful assistant."),
            ("user", _sentence(rng)),
            ("assistant", _tool_call_json(rng) if rng.random() < 0.6 else _sentence(rng)),
            ("user", f"<tool_response>\n{json.dumps(_json_value(rng))}\n</tool_response>"),
        )
    )
    thought = f"<think>\n{_sentence(rng)}\n</think>\n" if rng.random() < 0.2 else ""
    return "".join(turns) + thought
