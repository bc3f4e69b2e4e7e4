"""`python -m server`: run the gateway (flags override the YAML file and the environment);
`python -m server selftest`: check every tool_choice mode of a gateway (see server/selftest.py);
`python -m server fetch NAME`: download a catalogue model, verified (see server/serving/catalogue.py)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import httpx

from server.errors import ConfigError


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m server",
        description="callgate gateway",
        epilog="`python -m server selftest --help`: check every tool_choice mode of a gateway; "
        "`python -m server fetch --help`: download a catalogue model",
    )
    _model_flags(p)
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument(
        "--allow-open",
        action="store_true",
        default=None,
        help="serve with no API key on a non-loopback --host, on purpose (auth.allow_open)",
    )
    return p.parse_args(argv)


def parse_selftest_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m server selftest",
        description="run every tool_choice mode, streamed and not, against each served model and print a "
        "table; exit 1 if a mode is broken. Starts the gateway in-process unless --url is given.",
    )
    p.add_argument("--url", help="base URL of a running gateway (e.g. http://127.0.0.1:8000)")
    p.add_argument("--api-key", help="Bearer key for a gateway with auth (default: the first configured key)")
    p.add_argument("--seeds", type=int, default=2, help="seeds per mode (default: 2)")
    p.add_argument("--max-tokens", type=int, default=160, help="max_tokens per request (default: 160)")
    _model_flags(p)
    return p.parse_args(argv)


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML settings file")
    p.add_argument(
        "--model",
        type=Path,
        help="GGUF model file, or a catalogue name (`python -m server fetch "
        "--list`), fetched on first use (default: the demo model)",
    )
    p.add_argument("--served-model-name", help="the model id clients send")
    p.add_argument("--chat-template", type=Path, help="Jinja chat template overriding the model's")
    p.add_argument("--tool-format", help="tool-call format (default: auto, detected from the chat template)")


SHUTDOWN_GRACE_S = 5


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["selftest"]:
        return _selftest(parse_selftest_args(argv[1:]))
    if argv[:1] == ["fetch"]:
        from server.serving.fetch import main as fetch_main

        return fetch_main(argv[1:])
    args = parse_args(argv)
    try:
        app, settings = _build(args)
    except ConfigError as exc:
        print(f"callgate: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    # After the drain (server.shutdown_timeout_s), uvicorn waits at most this for connections
    # (a client that stopped reading holds one open forever).
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level="info",
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
    )
    return 0


def _selftest(args: argparse.Namespace) -> int:
    from server.selftest import Options, exit_code, format_table, run_selftest, serve_in_thread

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the table
    options = Options(seeds=tuple(range(args.seeds)), max_tokens=args.max_tokens, api_key=args.api_key)
    try:
        if args.url:
            checks = run_selftest(args.url, options)
        else:
            app, settings = _build(args)
            keys = [k.get_secret_value() for k in settings.auth.api_keys + settings.auth.admin_keys]
            options = replace(options, api_key=options.api_key or next(iter(keys), None))
            with serve_in_thread(app) as url:
                checks = run_selftest(url, options)
    except (ConfigError, httpx.HTTPError) as exc:
        print(f"callgate selftest: {exc}", file=sys.stderr)
        return 2
    print(format_table(checks))
    failed = sum(not c.ok for c in checks)
    print(f"{len(checks) - failed}/{len(checks)} checks ok" + (f", {failed} FAILED" if failed else ""))
    return exit_code(checks)


def _build(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from server.api.app import create_app
    from server.config import load_settings
    from server.metrics import Metrics
    from server.serving.build import build_registry

    settings = load_settings(
        args.config,
        **{
            "model.path": args.model,
            "model.served_name": args.served_model_name,
            "model.chat_template": args.chat_template,
            "model.tool_format": args.tool_format,
            "server.host": getattr(args, "host", None),
            "server.port": getattr(args, "port", None),
            "auth.allow_open": getattr(args, "allow_open", None),
        },
    )
    metrics = Metrics()
    registry = build_registry(settings, metrics)
    for name, served in registry.models.items():
        logging.getLogger("callgate").info(
            "serving %s: format=%s (%s) trigger=%r template=%s context=%d",
            name,
            served.format.name,
            served.provenance.format,
            served.format.envelope.open,
            served.provenance.template,
            served.info.context_length,
        )
    return create_app(settings, registry, metrics), settings


if __name__ == "__main__":
    sys.exit(main())
