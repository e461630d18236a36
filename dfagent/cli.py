"""Command line: `dfagent run | status | gc | verify | config check`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dfagent import __version__
from dfagent.agent import Agent
from dfagent.config import Config, dump, load
from dfagent.control import call_agent
from dfagent.errors import ConfigError, StartupError
from dfagent.logs import setup_logging
from dfagent.maintenance import Maintenance
from dfagent.metrics import Metrics
from dfagent.storage.gc import GarbageCollector
from dfagent.storage.scrub import Scrubber
from dfagent.storage.store import PieceStore

__all__ = ["main"]

log = logging.getLogger("dfagent")

EXIT_CONFIG = 2
EXIT_STARTUP = 1
EXIT_CORRUPT = 1


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

    status = commands.add_parser("status", help="cache usage, blobs and pieces")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    gc = commands.add_parser("gc", help="run eviction now (age, then quota)")
    verify = commands.add_parser(
        "verify", help="re-hash every stored piece; exit 1 when any is corrupt"
    )
    verify.add_argument("--repair", action="store_true", help="drop corrupt pieces")
    for maintenance_cmd in (status, gc, verify):
        maintenance_cmd.add_argument("--config", "-c", help="the agent's config file")

    config_cmd = commands.add_parser("config", help="inspect configuration")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="print the effective config, or its errors")
    check.add_argument("file")

    args = parser.parse_args(argv)
    if args.command == "config":
        return _check(args.file)
    if args.command in ("status", "gc", "verify"):
        return _maintain(args)
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
    _raise_open_file_limit()
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


def _maintain(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    directory = Path(config.storage.dir)
    if not directory.is_dir():
        print(f"dfagent: no cache at {directory} (storage.dir)", file=sys.stderr)
        return EXIT_STARTUP
    if args.command == "status":
        request, action = ("GET", "/status"), lambda m: m.status()
    elif args.command == "gc":
        request, action = ("POST", "/gc"), lambda m: m.gc()
    else:
        query = "?repair=1" if args.repair else ""
        request = ("POST", f"/verify{query}")
        action = lambda m: m.verify(repair=args.repair)  # noqa: E731
    try:
        answer = asyncio.run(_ask(config, request, action))
    except StartupError as exc:
        print(f"dfagent: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    if args.command == "status" and not args.json:
        print(_describe_status(answer))
    else:
        print(json.dumps(answer, indent=2))
    if args.command == "verify" and answer["bad"]:
        return EXIT_CORRUPT
    return 0


async def _ask(
    config: Config,
    request: tuple[str, str],
    action: Callable[[Maintenance], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """The running agent's answer, or the same action done here when no agent runs."""
    directory = Path(config.storage.dir)
    answer = await call_agent(directory, *request)
    if answer is not None:
        return answer
    metrics = Metrics()
    async with PieceStore(config.storage, metrics) as store:
        gc = GarbageCollector(store, config.storage, metrics)
        scrubber = Scrubber(store, config.storage, metrics)
        return await action(Maintenance(store, gc, scrubber))


def _describe_status(status: dict[str, Any]) -> str:
    def size(n: float) -> str:
        for unit in ("B", "KiB", "MiB", "GiB"):
            if n < 1024:
                return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
            n /= 1024
        return f"{n:.1f} TiB"

    lines = [
        f"storage  {status['dir']}",
        f"usage    {size(status['stored'])} of {size(status['quota'])} quota "
        f"({status['usage']:.1%}), {status['pieces']} pieces",
        f"blobs    {status['blobs']} ({status['verified_blobs']} verified, "
        f"{status['partial_blobs']} partial)",
    ]
    for title, key in (("largest", "largest"), ("recently read", "recent")):
        if status[key]:
            lines.append(f"{title}:")
        for blob in status[key]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(blob["last_access"]))
            state = (
                "verified"
                if blob["verified"]
                else f"{blob['stored'] * 100 // max(blob['size'], 1)}%"
            )
            lines.append(
                f"  {blob['digest'][:19]}…  {size(blob['stored']):>10} of {size(blob['size']):>10}"
                f"  {state:>8}  read {when}"
            )
    return "\n".join(lines)


def _raise_open_file_limit() -> None:
    """Each cached blob being served holds a file open: take all the descriptors we may."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


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
