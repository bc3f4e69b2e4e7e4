"""`python -m server`: run the gateway (flags override the YAML file and the environment)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server.errors import ConfigError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server", description="callgate gateway")
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument("--model", type=Path, help="GGUF model file (default: the demo model)")
    p.add_argument("--served-model-name", help="the model id clients send")
    p.add_argument("--chat-template", type=Path, help="Jinja chat template overriding the model's")
    p.add_argument("--tool-format", help="tool-call format (default: hermes)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app, settings = _build(args)
    except ConfigError as exc:
        print(f"callgate: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=settings.server.host, port=settings.server.port, log_level="info")
    return 0


def _build(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from server.api.app import create_app
    from server.config import load_settings
    from server.metrics import Metrics
    from server.serving import build_registry

    settings = load_settings(
        args.config,
        **{
            "model.path": args.model,
            "model.served_name": args.served_model_name,
            "model.chat_template": args.chat_template,
            "model.tool_format": args.tool_format,
            "server.host": args.host,
            "server.port": args.port,
        },
    )
    metrics = Metrics()
    registry = build_registry(settings, metrics)
    for name, served in registry.models.items():
        logging.getLogger("callgate").info(
            "serving %s: format=%s trigger=%r context=%d", name, served.format.name,
            served.format.envelope.open, served.info.context_length)
    return create_app(settings, registry, metrics), settings


if __name__ == "__main__":
    sys.exit(main())
