"""Training recipes: frozen config dataclasses loaded from commented YAML, then `key=value`
overrides from the command line. Values are parsed as YAML scalars (so `lr=1e-4`, `full=true`,
`train=[a.jsonl,b.jsonl]` work) and checked against the field's type; an unknown key is an error
that lists the known ones. Knows nothing of what the fields mean.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
# YAML 1.1 (PyYAML) reads `1e-4` as a string: its floats need a dot. YAML 1.2's float form, so a
# learning rate written the usual way is a float; "nan" and "inf" stay refused.
_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")


class RecipeError(ValueError):
    pass


def load_recipe(
    cls: type[T], path: Path | None = None, overrides: Sequence[str] = (), extra: Mapping[str, Any] | None = None
) -> T:
    """`cls` from the YAML file at `path` (if any), then `extra` (explicit flags), then `overrides`."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise RecipeError(f"{path}: a recipe is a YAML mapping of field: value")
        values.update(loaded)
    values.update({k: v for k, v in (extra or {}).items() if v is not None})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise RecipeError(f"override {item!r} is not key=value")
        values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return build(cls, values)


def build(cls: type[T], values: Mapping[str, Any]) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"unknown recipe keys {unknown}; known: {', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    return cls(**{k: _coerce(k, v, hints[k]) for k, v in values.items()})


def to_dict(config: Any) -> dict[str, Any]:
    """A recipe as plain data (Paths as strings, tuples as lists), ready for YAML."""

    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Accept YAML's natural value for a field (int for float, str for Path, list for tuple)."""
    options = typing.get_args(hint) if _is_union(hint) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise RecipeError(f"{key} may not be empty")
    for option in options:
        if option is type(None):
            continue
        ok, out = _as(value, option)
        if ok:
            return out
    raise RecipeError(f"{key}={value!r} is not a {hint}")


def _as(value: Any, option: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(option)
    if origin is tuple:
        items = value if isinstance(value, list | tuple) else [value]
        inner = typing.get_args(option)[0]
        converted = [_as(v, inner) for v in items]
        return all(ok for ok, _ in converted), tuple(v for _, v in converted)
    if option is typing.Any:
        return True, value
    if option is float and isinstance(value, int | float) and not isinstance(value, bool):
        return True, float(value)
    if option is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return True, float(value)
    if option is Path and isinstance(value, str | Path):
        return True, Path(value)
    if typing.get_origin(option) is typing.Literal:
        return value in typing.get_args(option), value
    if isinstance(option, type) and isinstance(value, option) and not (option is int and isinstance(value, bool)):
        return True, value
    return False, None


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)
