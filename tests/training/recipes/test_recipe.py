"""Recipe loading: YAML files, then key=value overrides, checked against the dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from training.recipes.loader import RecipeError, load_recipe


@dataclass(frozen=True)
class Recipe:
    lr: float = 2e-4
    steps: int = 10
    name: str = "x"


@pytest.mark.parametrize(("raw", "expected"), [("1e-4", 1e-4), ("5E-4", 5e-4), ("-2e+3", -2000.0),
                                               ("0.0005", 5e-4), (".5", 0.5), ("3", 3.0)])  # fmt: skip
def test_a_float_in_exponent_form_is_a_float_from_flags_and_files(raw: str, expected: float, tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-4 as a string; a learning rate is mostly written that way.
    assert load_recipe(Recipe, overrides=[f"lr={raw}"]).lr == expected
    path = tmp_path / "r.yaml"
    path.write_text(f"lr: {raw}\n", encoding="utf-8")
    assert load_recipe(Recipe, path).lr == expected


@pytest.mark.parametrize("raw", ["nan", "inf", "fast", "1e", "e4", "1.0.0"])
def test_what_is_not_a_number_is_refused_with_the_field_named(raw: str) -> None:
    with pytest.raises(RecipeError, match="lr="):
        load_recipe(Recipe, overrides=[f"lr={raw}"])


def test_a_string_field_keeps_a_number_like_string_and_an_int_field_refuses_a_float() -> None:
    assert load_recipe(Recipe, overrides=["name=1e-4"]).name == "1e-4"
    with pytest.raises(RecipeError, match="steps="):
        load_recipe(Recipe, overrides=["steps=1e-4"])


@pytest.mark.parametrize(
    ("caps", "expected"),
    [({"avx2": True}, "float32"), ({"avx512_bf16": True}, "bfloat16"), ({"amx_bf16": True}, "bfloat16")],
)
def test_auto_dtype_is_bfloat16_only_where_the_cpu_multiplies_in_it(
    caps: dict[str, bool], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from training.recipes import common

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(common, "torch_cpu_capabilities", lambda: caps)
    assert common.pick_dtype("auto") == getattr(torch, expected)
    assert common.pick_dtype("float32") == torch.float32  # a named dtype is taken as named


def test_the_machine_s_own_capabilities_are_read() -> None:
    from training.recipes.common import torch_cpu_capabilities

    caps = torch_cpu_capabilities()
    assert caps["num_logical_cores"] >= 1 and isinstance(caps.get("avx512_bf16"), bool)
