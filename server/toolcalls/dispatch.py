"""Client-side tool dispatch: run the calls of an assistant message with Python functions.

`tool_specs(tools)` gives the OpenAI `tools` list; `dispatch(message, tools)` validates each
call's arguments, runs it, and returns the `role: tool` messages to send back. What the model
got wrong (unknown tool, bad arguments) and what a tool raised become `{"error": ...}` results
it can recover from, never exceptions. Pure: stdlib and jsonschema; pydantic only if you use it.
"""

from __future__ import annotations

import enum
import inspect
import json
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import jsonschema

JSONDict = dict[str, Any]

_SCALARS: dict[object, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_ARRAYS = (list, set, frozenset, tuple, Sequence, Iterable)
_OBJECTS = (dict, Mapping)
SUPPORTED = (
    "str, int, float, bool, None, list[X], tuple[X, ...], dict[str, X], Literal[...], Enum, "
    "X | Y, Optional[X], Annotated[X, 'description'], Any, a pydantic model"
)


@dataclass(frozen=True)
class _Tool:
    """A tool as dispatch sees it: its spec, and how to run it on validated arguments."""

    name: str
    description: str
    parameters: JSONDict
    run: Callable[[JSONDict], Any]

    def spec(self) -> JSONDict:
        function: JSONDict = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


def tool_specs(tools: Iterable[Any]) -> list[JSONDict]:
    """The OpenAI `tools` list for callables (schema from the signature and type hints) and
    pydantic models (schema from `model_json_schema`)."""
    return [tool.spec() for tool in _table(tools).values()]


def dispatch(message: Any, tools: Iterable[Any]) -> list[JSONDict]:
    """The tool messages answering every call in `message` (an openai ChatCompletionMessage
    or a dict), in order. Raises only for mistakes in `tools` themselves (TypeError)."""
    table = _table(tools)
    return [
        {"role": "tool", "tool_call_id": call_id, "content": _run(table, name, arguments)}
        for call_id, name, arguments in _calls(message)
    ]


def _table(tools: Iterable[Any]) -> dict[str, _Tool]:
    table: dict[str, _Tool] = {}
    for tool in tools:
        entry = _from_model(tool) if _is_model(tool) else _from_callable(tool)
        if entry.name in table:
            raise TypeError(f"two tools are named {entry.name!r}; tool names must be unique")
        table[entry.name] = entry
    return table


def _calls(message: Any) -> list[tuple[str, str, Any]]:
    data = message.model_dump() if hasattr(message, "model_dump") else message
    if not isinstance(data, Mapping):
        raise TypeError(f"expected a chat message (ChatCompletionMessage or dict), got {type(message).__name__}")
    out: list[tuple[str, str, Any]] = []
    for call in data.get("tool_calls") or []:
        function = call.get("function") or {}
        out.append((call.get("id") or "", function.get("name") or "", function.get("arguments")))
    return out


def _run(table: Mapping[str, _Tool], name: str, arguments: Any) -> str:
    tool = table.get(name)
    if tool is None:
        return _error(f"unknown tool {name!r}; available tools: {', '.join(sorted(table)) or 'none'}")
    args, problem = _arguments(tool, arguments)
    if problem is not None:
        return _error(problem)
    try:
        result = tool.run(args)
    except Exception as exc:  # noqa: BLE001 - a failing tool is a result the model can react to
        return _error(f"{name} raised {type(exc).__name__}: {exc}")
    return _content(result)


def _arguments(tool: _Tool, raw: Any) -> tuple[JSONDict, str | None]:
    """The decoded arguments, or why they cannot be used."""
    try:
        args = json.loads(raw) if isinstance(raw, str) and raw.strip() else (raw or {})
    except json.JSONDecodeError as exc:
        return {}, f"arguments for {tool.name} are not JSON: {exc}"
    if not isinstance(args, dict):
        return {}, f"arguments for {tool.name} must be a JSON object, got {type(args).__name__}"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(tool.parameters).iter_errors(args))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        return {}, f"invalid arguments for {tool.name} at {where}: {error.message}"
    return args, None


def _content(result: Any) -> str:
    if isinstance(result, str):
        return result
    if hasattr(result, "model_dump_json"):
        return str(result.model_dump_json())
    return json.dumps(result, ensure_ascii=False, default=str)


def _error(message: str) -> str:
    return json.dumps({"error": message}, ensure_ascii=False)


# --- callables: the schema from the signature ---------------------------------------------


def _from_callable(fn: Any) -> _Tool:
    if not callable(fn):
        raise TypeError(f"a tool must be a callable or a pydantic model class, got {fn!r}")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"{_name(fn)} is async; dispatch runs plain functions (wrap it with asyncio.run)")
    # A callable object's annotations live on its __call__.
    hints = get_type_hints(fn if inspect.isroutine(fn) else fn.__call__, include_extras=True)
    defs: JSONDict = {}
    properties: JSONDict = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise TypeError(f"{_name(fn)}: parameter {param.name!r} cannot be passed by keyword from JSON")
        properties[param.name] = _param_schema(param, hints.get(param.name, Any), defs, fn)
        if param.default is param.empty:
            required.append(param.name)
    parameters: JSONDict = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    if defs:
        parameters["$defs"] = defs
    return _Tool(_name(fn), _doc(fn), parameters, lambda args: fn(**_coerce_all(args, hints)))


def _param_schema(param: inspect.Parameter, hint: Any, defs: JSONDict, fn: Any) -> JSONDict:
    try:
        schema = schema_for(hint, defs)
    except TypeError as exc:
        raise TypeError(f"{_name(fn)}: parameter {param.name!r}: {exc}") from None
    if param.default is not param.empty and _is_json(param.default):
        schema = {**schema, "default": _jsonable(param.default)}
    return schema


def schema_for(hint: Any, defs: JSONDict | None = None) -> JSONDict:
    """The JSON Schema of a type hint; pydantic models' `$defs` are gathered into `defs`."""
    defs = {} if defs is None else defs
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if isinstance(hint, type) and hint in _SCALARS:
        return {"type": _SCALARS[hint]}
    if hint is None or hint is type(None):
        return {"type": "null"}
    if origin is Annotated:
        return _annotated(args, defs)
    if origin is Literal:
        return _enum([_jsonable(a) for a in args])
    if origin is Union or origin is types.UnionType:
        return {"anyOf": [schema_for(a, defs) for a in args]}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return _enum([member.value for member in hint])
    if _is_model(hint):
        return _model_schema(hint, defs)
    return _container(hint, origin, args, defs)


def _enum(values: list[Any]) -> JSONDict:
    """An enum, typed when its values share a JSON type (a typed enum reads better in prompts)."""
    kinds = {_SCALARS.get(type(v)) for v in values}
    return {"type": kinds.pop(), "enum": values} if len(kinds) == 1 and None not in kinds else {"enum": values}


def _annotated(args: tuple[Any, ...], defs: JSONDict) -> JSONDict:
    schema = schema_for(args[0], defs)
    notes = [a for a in args[1:] if isinstance(a, str)]
    return {**schema, "description": " ".join(notes)} if notes else schema


def _container(hint: Any, origin: Any, args: tuple[Any, ...], defs: JSONDict) -> JSONDict:
    kind = origin or hint
    if kind in _ARRAYS:
        if kind is tuple and args and args[-1] is not Ellipsis:  # tuple[A, B]: fixed positions
            return {
                "type": "array",
                "prefixItems": [schema_for(a, defs) for a in args],
                "minItems": len(args),
                "maxItems": len(args),
            }
        return {"type": "array", "items": schema_for(args[0], defs)} if args else {"type": "array"}
    if kind in _OBJECTS:
        if len(args) == 2 and args[1] is not Any:
            return {"type": "object", "additionalProperties": schema_for(args[1], defs)}
        return {"type": "object"}
    raise TypeError(f"unsupported annotation {hint!r}; supported: {SUPPORTED}")


def _coerce_all(args: JSONDict, hints: Mapping[str, Any]) -> JSONDict:
    return {key: _coerce(value, hints.get(key, Any)) for key, value in args.items()}


def _coerce(value: Any, hint: Any) -> Any:
    """Validated JSON -> what the annotation asks for: Enum members and pydantic models."""
    origin, args = get_origin(hint), get_args(hint)
    if origin is Annotated:
        return _coerce(value, args[0])
    if (origin is Union or origin is types.UnionType) and value is not None:
        options = [a for a in args if a is not type(None)]
        return _coerce(value, options[0]) if len(options) == 1 else value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return hint(value)
    if _is_model(hint):
        return hint.model_validate(value)
    return value


# --- pydantic models: the schema is the model's, the instance is the call -------------------


def _is_model(obj: Any) -> bool:
    return (
        isinstance(obj, type) and callable(getattr(obj, "model_json_schema", None)) and hasattr(obj, "model_validate")
    )


def _model_schema(model: Any, defs: JSONDict) -> JSONDict:
    schema: JSONDict = dict(model.model_json_schema())
    defs.update(schema.pop("$defs", {}))  # refs point at the root: "#/$defs/Name"
    return schema


def _from_model(model: Any) -> _Tool:
    """A pydantic model as a tool: the arguments build an instance; a callable instance is
    called (its return value is the result), any other is the result itself."""
    parameters: JSONDict = dict(model.model_json_schema())
    parameters.pop("title", None)  # the tool's name and description say these
    parameters.pop("description", None)

    def run(args: JSONDict) -> Any:
        instance = model.model_validate(args)
        return instance() if callable(instance) else instance

    return _Tool(model.__name__, _doc(model), parameters, run)


# --- small helpers ----------------------------------------------------------------------------


def _name(fn: Any) -> str:
    return str(getattr(fn, "__name__", type(fn).__name__))


def _doc(obj: Any) -> str:
    """The docstring's first paragraph: the description the model reads. Its own `__doc__`:
    inspect.getdoc would hand a docstring-less model pydantic's BaseModel docstring."""
    doc = inspect.cleandoc(obj.__doc__ or "")
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _is_json(value: Any) -> bool:
    try:
        json.dumps(_jsonable(value))
    except (TypeError, ValueError):
        return False
    return True


def _jsonable(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value
