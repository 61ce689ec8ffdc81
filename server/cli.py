"""`streamlens serve`: run the server. Flags override environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from analysis.cli import add_analyze_parser, run_analyze
from media.manager import STREAMS_KEY
from server import __version__
from server.heap import pin_mmap_threshold
from server.settings import ENV_FILE, SECTIONS, Settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamlens", description="Real-time AI media server")
    parser.add_argument("--version", action="version", version=f"streamlens {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="address to listen on (HOST)")
    serve.add_argument("--port", type=int, help="TCP port (PORT)")
    serve.add_argument("--max-streams", type=int, help="streams run at once (MAX_STREAMS)")
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING, ERROR (LOG_LEVEL)")
    serve.add_argument(
        "--api-token",
        help="bearer token of the api role (API_TOKEN); prefer the variable: "
        "command lines are visible to every user of the machine",
    )
    serve.add_argument("--auth-token", help="bearer token of the livepeer role (AUTH_TOKEN); as above")
    serve.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="any other setting, e.g. --set encoder_preset=veryfast; a feature section's as "
        "SECTION.FIELD=VALUE, e.g. --set asr.model=small (sections: " + ", ".join(SECTIONS) + "; repeatable)",
    )
    add_analyze_parser(sub)  # `streamlens analyze FILE_OR_URL ...` (analysis/cli.py)
    return parser


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The one settings tree: environment and .env, then these flags over them (sections too)."""
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "max_streams", "log_level", "api_token", "auth_token"):
        value = getattr(args, name, None)
        if value is not None:
            overrides[name] = value
    sections: dict[str, dict[str, Any]] = {}  # field values as given; each section's model parses them
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects NAME=VALUE, got {item!r}")
        name = name.strip().lower().replace("-", "_")
        section, dot, field = name.partition(".")
        if dot:
            model = SECTIONS.get(section)
            if model is None:
                raise SystemExit(f"unknown settings section {section!r} (one of {', '.join(SECTIONS)})")
            if field not in model.model_fields:
                raise SystemExit(f"unknown setting {name!r}")
            sections.setdefault(section, {})[field] = value
        elif name in Settings.model_fields and name not in SECTIONS:
            overrides[name] = value
        else:
            raise SystemExit(f"unknown setting {name!r}")
    try:
        for section, values in sections.items():
            overrides[section] = SECTIONS[section](_env_file=ENV_FILE, **values)  # flags over its variables
        return Settings(**overrides)
    except ValidationError as exc:
        raise SystemExit(f"invalid settings: {exc}") from None


log = logging.getLogger("streamlens")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # faster-whisper logs every model call at INFO; keep its warnings only
    logging.getLogger("faster_whisper").setLevel(max(logging.WARNING, logging.getLogger().level))


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM. Streams are stopped while the server still listens, so their last
    segments and channel DELETEs reach an output on this very server; then everything closes."""
    from server.access import startup_warnings
    from server.app import create_app, make_runner  # imported late so --help stays fast

    for warning in startup_warnings(settings):
        log.warning("!!! %s", warning)
    app = create_app(settings)
    runner = make_runner(app, settings)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("streamlens %s listening on http://%s:%d", __version__, settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down")
        await app[STREAMS_KEY].stop_all("server shutting down")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "analyze":
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        raise SystemExit(run_analyze(args))
    settings = settings_from_args(args)
    configure_logging(settings.log_level)
    if pin_mmap_threshold(settings.malloc_mmap_threshold):
        log.info(
            "heap blocks >= %d bytes are mapped on their own (MALLOC_MMAP_THRESHOLD)", settings.malloc_mmap_threshold
        )
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
