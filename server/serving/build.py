"""Settings -> the served models: resolve the model file, load the engine, pick the chat
template (override file, else the model's own) and the tool-call format (configured, or
detected from that template when the setting is "auto"), then the adapters on it (the
folder adapters.dir; with no --model, the demo model and the demo adapter there)."""

from __future__ import annotations

from pathlib import Path

from server.adapters.registry import open_adapters
from server.admission import Admission
from server.config import Settings
from server.engines import make_engine
from server.engines.base import Engine
from server.errors import ConfigError
from server.metrics import Metrics
from server.serving import catalogue, fetch
from server.serving.registry import ModelRegistry
from server.serving.served import Policy, Provenance, Served
from server.toolcalls.detect import resolve_format

DEMO_MODEL = Path("models/demo/model.gguf")
HOW_TO_GET_A_MODEL = (
    "no --model given and the demo model is not built at models/demo/model.gguf. Either pass "
    "--model PATH.gguf, or a catalogue name (fetched on first use; `python -m server fetch --list`), "
    "e.g. --model qwen2.5-coder-0.5b-instruct, or build a model first: `python -m training init-tiny "
    "--out models/tiny` (seconds; random weights, for trying the API) then `--model models/tiny/model.gguf`"
)


def resolve_model_path(settings: Settings) -> Path:
    """model.path as a file, or a catalogue name (fetched on first use), or the demo model."""
    if settings.model.path is not None:
        return fetch.resolve(settings.model.path, settings.model.models_dir)
    if not DEMO_MODEL.is_file():
        raise ConfigError(HOW_TO_GET_A_MODEL)
    return DEMO_MODEL


def build_registry(settings: Settings, metrics: Metrics, engine: Engine | None = None) -> ModelRegistry:
    # Upstream engines (vLLM, llama-server) need no local model file; model.path, if given,
    # is the same GGUF, for checking adapters' base-model hashes.
    remote = settings.engine.kind != "llamacpp"
    path = settings.model.path if remote else resolve_model_path(settings)
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"path": path})})
    engine = engine or make_engine(settings, metrics)
    info = engine.info()
    # models/<name>/model.gguf is served as <name>; any other file by its stem.
    known = catalogue.of_file(path) if path is not None else None
    name = settings.model.served_name or (
        known.name
        if known
        else info.model
        if remote or path is None
        else path.parent.name
        if path.stem == "model"
        else path.stem
    )
    template, template_source = _template(settings, info.chat_template, known)
    tool_format, format_source = resolve_format(settings.model.tool_format, template)
    registry = ModelRegistry()
    base = Served(
        name=name,
        engine=engine,
        info=info,
        format=tool_format,
        template=template,
        admission=_admission(settings, metrics, name, engine.parallelism),
        policy=Policy(
            _threshold(settings, known),
            settings.generation.validation_retries,
            adapter_threshold=settings.model.no_tool_threshold,
        ),
        provenance=Provenance(format_source, template_source),
    )
    registry.add(base)
    registry.adapters = open_adapters(settings, base, path)
    return registry


def _threshold(settings: Settings, known: catalogue.CatalogueModel | None) -> float | None:
    """The configured no-tool threshold, else the catalogue's calibrated one for this model."""
    if settings.model.no_tool_threshold is not None:
        return settings.model.no_tool_threshold
    return known.no_tool_threshold if known and settings.model.catalogue_threshold else None


def _template(settings: Settings, embedded: str | None, known: catalogue.CatalogueModel | None) -> tuple[str, str]:
    """The template text and where it came from: the override file's path, "model", or the
    catalogue's file for a model that carries none."""
    override = settings.model.chat_template
    if override is None and not embedded and known is not None and known.chat_template:
        override = catalogue.TEMPLATES_DIR / known.chat_template
    if override is not None:
        try:
            return override.read_text(), str(override)
        except OSError as exc:
            raise ConfigError(f"cannot read chat template {override}: {exc}") from None
    if not embedded:
        raise ConfigError("the model has no chat template; pass --chat-template FILE")
    return embedded, "model"


def _admission(settings: Settings, metrics: Metrics, name: str, slots: int) -> Admission:
    def report(waiting: int, running: int) -> None:
        metrics.queue_depth.labels(name).set(waiting)
        metrics.running.labels(name).set(running)

    limits = settings.limits
    return Admission(slots, limits.max_queue, limits.queue_timeout_s, report)
