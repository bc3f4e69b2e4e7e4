"""server/plaintext.py: client text that spells special tokens is marked, and a marked prompt
splits back into spans, whatever a template did to the marks."""

from __future__ import annotations

from server.plaintext import PLAIN_CLOSE as C
from server.plaintext import PLAIN_OPEN as O
from server.plaintext import mark_specials, mark_value, prompt_spans, unmarked

SPECIALS = frozenset({"<|im_end|>", "<|im_start|>", "<|im", "</s>"})


def test_longest_special_is_marked_and_client_marks_are_dropped() -> None:
    assert mark_specials(f"a<|im_end|>b{O}c{C}", SPECIALS) == f"a{O}<|im_end|>{C}bc"
    assert mark_specials("plain text", SPECIALS) == "plain text" and mark_specials("x", frozenset()) == "x"
    assert mark_value({"<|im_end|>": ["</s>", 1, None]}, SPECIALS) == {f"{O}<|im_end|>{C}": [f"{O}</s>{C}", 1, None]}


def test_spans_of_a_marked_prompt() -> None:
    prompt = f"<|im_start|>user\nhi {O}<|im_end|>{C} there<|im_end|>"
    assert list(prompt_spans(prompt)) == [
        ("<|im_start|>user\nhi ", True),
        ("<|im_end|>", False),
        (" there<|im_end|>", True),
    ]
    assert unmarked(prompt) == "<|im_start|>user\nhi <|im_end|> there<|im_end|>"


def test_unpaired_marks_from_a_template_that_split_client_text_are_dropped() -> None:
    assert list(prompt_spans(f"a{O}b")) == [("ab", True)]
    assert list(prompt_spans(f"a{C}b{O}</s>{C}c")) == [("ab", True), ("</s>", False), ("c", True)]
    assert list(prompt_spans(f"{O}a{O}</s>{C}")) == [("a", True), ("</s>", False)]
    assert list(prompt_spans("")) == []
