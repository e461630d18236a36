"""Command line: `dfagent run`, `dfagent config check`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from dfagent import __version__
from dfagent.agent import Agent
from dfagent.config import Config, dump, load
from dfagent.errors import ConfigError, StartupError
from dfagent.logs import setup_logging

__all__ = ["main"]

log = logging.getLogger("dfagent")

EXIT_CONFIG = 2
EXIT_STARTUP = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dfagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dfagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run", help="run the agent (embedded single-node default without --config)"
    )
    run.add_argument("--config", "-c", help="YAML config file (see config/dfagent.yaml)")
    run.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="event loop: asyncio (kernel sendfile for cache hits, the default) or uvloop",
    )

    config_cmd = commands.add_parser("config", help="inspect configuration")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="print the effective config, or its errors")
    check.add_argument("file")

    args = parser.parse_args(argv)
    if args.command == "config":
        return _check(args.file)
    return _run(args.config, args.loop)


def _load(path: str | None) -> Config | None:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"dfagent: invalid config {path}:", file=sys.stderr)
        for field, reason in exc.problems:
            print(f"  {field}: {reason}", file=sys.stderr)
        return None


def _check(path: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    sys.stdout.write(dump(config))
    return 0


def _run(path: str | None, loop: str) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    setup_logging(config.log.level)
    if loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    try:
        runner(_serve(config))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return 130
    return 0


async def _serve(config: Config) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGTERM, signal.SIGINT)

    def on_signal(signum: int) -> None:
        if stop.is_set():  # a second signal: stop waiting for in-flight requests
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(1)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stop.set()

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    async with Agent(config):
        await stop.wait()
