"""BFCL data read straight from the `bfcl-eval` wheel (downloaded once, never installed): its
categories, entries, and function sets converted to server.types.Tool with JSON Schema
parameters. Used by tests and benchmarks; knows nothing of scoring, models or the gateway.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from server.types import JSONSchema, Tool

BFCL_VERSION = "2026.3.23"
DATA_PREFIX = "bfcl_eval/data/BFCL_v4_"
REPO = Path(__file__).resolve().parents[2]

# BFCL's Python/Java/JavaScript type names -> JSON Schema (after bfcl_eval's GORILLA_TO_OPENAPI,
# except that "any" means any value, not a string). Unknown names also mean any value.
TYPE_MAP: dict[str, str | None] = {
    "string": "string",
    "String": "string",
    "char": "string",
    "integer": "integer",
    "int": "integer",
    "long": "integer",
    "byte": "integer",
    "short": "integer",
    "Bigint": "integer",
    "number": "number",
    "float": "number",
    "double": "number",
    "boolean": "boolean",
    "bool": "boolean",
    "Boolean": "boolean",
    "array": "array",
    "list": "array",
    "tuple": "array",
    "Array": "array",
    "ArrayList": "array",
    "Queue": "array",
    "Stack": "array",
    "dict": "object",
    "object": "object",
    "HashMap": "object",
    "Hashtable": "object",
    "any": None,
    "Any": None,
}


def cache_dir() -> Path:
    """$CALLGATE_CACHE/bfcl, or <repo>/.cache/bfcl."""
    root = os.environ.get("CALLGATE_CACHE")
    return (Path(root) if root else REPO / ".cache") / "bfcl"


def wheel_path() -> Path:
    """The bfcl-eval wheel, fetched with pip (no dependencies, no install) when absent."""
    folder = cache_dir()
    found = _newest(folder, BFCL_VERSION) or _newest(folder, "*")
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    pin = f"bfcl-eval=={BFCL_VERSION}"
    subprocess.run([sys.executable, "-m", "pip", "download", pin, "--no-deps", "-d", str(folder)], check=True)
    downloaded = _newest(folder, BFCL_VERSION)
    if downloaded is None:
        raise FileNotFoundError(f"pip download {pin} left no wheel in {folder}")
    return downloaded


def _newest(folder: Path, version: str) -> Path | None:
    return max(folder.glob(f"bfcl_eval-{version}-*.whl"), default=None)


@cache
def _read(name: str) -> str:
    with zipfile.ZipFile(wheel_path()) as archive:
        return archive.read(f"{DATA_PREFIX}{name}.json").decode("utf-8")


@lru_cache(maxsize=1)
def _all_names() -> tuple[str, ...]:
    with zipfile.ZipFile(wheel_path()) as archive:
        paths = [p for p in archive.namelist() if p.startswith(DATA_PREFIX) and p.endswith(".json")]
    return tuple(sorted(p[len(DATA_PREFIX) : -len(".json")] for p in paths))


@lru_cache(maxsize=1)
def _categories() -> tuple[str, ...]:
    # Skip files that are not JSON lines of entries (format_sensitivity is one JSON object).
    return tuple(n for n in _all_names() if _read(n).lstrip().startswith('{"id"'))


def categories() -> list[str]:
    """Categories available in the wheel (JSON-lines files of entries)."""
    return list(_categories())


def load_category(name: str) -> list[dict[str, Any]]:
    """The entries of one category, as BFCL wrote them."""
    if name not in _categories():
        raise ValueError(f"unknown BFCL category {name!r}; available: {', '.join(_categories())}")
    return [json.loads(line) for line in _read(name).splitlines() if line.strip()]


def function_categories() -> list[str]:
    """Categories whose entries carry function docs (the multi-turn ones name classes instead)."""
    return list(_function_categories())


@lru_cache(maxsize=1)
def _function_categories() -> tuple[str, ...]:
    return tuple(c for c in _categories() if any(e.get("function") for e in load_category(c)))


def function_sets(categories: Iterable[str] | None = None) -> list[list[Tool]]:
    """Each entry's functions as Tools, for the given categories (default: all with functions)."""
    names = function_categories() if categories is None else list(categories)
    return [
        [to_tool(doc) for doc in entry["function"]]
        for name in names
        for entry in load_category(name)
        if entry.get("function")
    ]


def to_tool(doc: dict[str, Any]) -> Tool:
    """A BFCL function doc as a Tool; "." in names becomes "_" as in BFCL's OpenAI handlers."""
    parameters = to_json_schema(doc.get("parameters") or {"type": "dict", "properties": {}})
    return Tool(doc["name"].replace(".", "_"), doc.get("description", ""), parameters)


def to_json_schema(node: JSONSchema) -> JSONSchema:
    """BFCL's Python-ish types mapped to JSON Schema, recursively (properties, items)."""
    out = {k: v for k, v in node.items() if k != "type"}
    mapped = TYPE_MAP.get(node["type"]) if "type" in node else None
    if mapped is not None:
        out["type"] = mapped
    if isinstance(node.get("properties"), dict):
        out["properties"] = {k: to_json_schema(v) for k, v in node["properties"].items()}
    if isinstance(node.get("items"), dict):
        out["items"] = to_json_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_json_schema(node["additionalProperties"])
    return out


ANSWER_PREFIX = "bfcl_eval/data/possible_answer/BFCL_v4_"


def load_possible_answers(name: str) -> dict[str, list[dict[str, Any]]]:
    """{entry id: ground truth} of one category: each expected call as {function: {argument:
    [acceptable values]}}. Empty for categories scored without answers (irrelevance, relevance)."""
    if name not in _categories():
        raise ValueError(f"unknown BFCL category {name!r}; available: {', '.join(_categories())}")
    text = _read_answers(name)
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return {row["id"]: row["ground_truth"] for row in rows}


@cache
def _read_answers(name: str) -> str:
    with zipfile.ZipFile(wheel_path()) as archive:
        member = f"{ANSWER_PREFIX}{name}.json"
        return archive.read(member).decode("utf-8") if member in archive.namelist() else ""
