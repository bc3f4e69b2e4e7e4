"""Settings -> the served models: resolve the model file, load the engine, pick the chat
template (override file, else the model's own) and the tool-call format."""

from __future__ import annotations

from pathlib import Path

from server.admission import Admission
from server.chat import Served
from server.config import Settings
from server.engines import make_engine
from server.engines.base import Engine
from server.errors import ConfigError
from server.metrics import Metrics
from server.registry import ModelRegistry
from server.toolcalls import get_format

DEMO_MODEL = Path("models/demo/model.gguf")
HOW_TO_GET_A_MODEL = (
    "no --model given and the demo model is not built at models/demo/model.gguf. Either pass "
    "--model PATH.gguf, or build a model first: `python -m training init-tiny --out models/tiny` "
    "(seconds; random weights, for trying the API) then `--model models/tiny/model.gguf`"
)


def resolve_model_path(settings: Settings) -> Path:
    path = settings.model.path or DEMO_MODEL
    if not path.is_file():
        raise ConfigError(HOW_TO_GET_A_MODEL if settings.model.path is None else f"model file not found: {path}")
    return path


def build_registry(settings: Settings, metrics: Metrics, engine: Engine | None = None) -> ModelRegistry:
    path = resolve_model_path(settings)
    settings = settings.model_copy(update={"model": settings.model.model_copy(update={"path": path})})
    engine = engine or make_engine(settings)
    info = engine.info()
    # models/<name>/model.gguf is served as <name>; any other file by its stem.
    name = settings.model.served_name or (path.parent.name if path.stem == "model" else path.stem)
    registry = ModelRegistry()
    registry.add(Served(
        name=name,
        engine=engine,
        info=info,
        format=get_format(settings.model.tool_format),
        template=_template(settings, info.chat_template),
        admission=_admission(settings, metrics, name, getattr(engine, "parallelism", 1)),
        no_tool_threshold=settings.model.no_tool_threshold,
        validation_retries=settings.generation.validation_retries,
    ))
    return registry


def _template(settings: Settings, embedded: str | None) -> str:
    override = settings.model.chat_template
    if override is not None:
        try:
            return override.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read chat template {override}: {exc}") from None
    if not embedded:
        raise ConfigError("the model has no chat template; pass --chat-template FILE")
    return embedded


def _admission(settings: Settings, metrics: Metrics, name: str, slots: int) -> Admission:
    def report(waiting: int, running: int) -> None:
        metrics.queue_depth.labels(name).set(waiting)
        metrics.running.labels(name).set(running)

    limits = settings.limits
    return Admission(slots, limits.max_queue, limits.queue_timeout_s, report)
