"""Command line: `dfagent run | get | preheat | status | gc | verify | config check`."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import resource
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from dfagent import __version__
from dfagent.agent import Agent
from dfagent.config import Config, dump, load
from dfagent.control import AgentRefused, call_agent
from dfagent.errors import BadRequest, ConfigError, StartupError
from dfagent.logs import setup_logging
from dfagent.maintenance import Maintenance
from dfagent.metrics import Metrics
from dfagent.preheat.request import PreheatRequest
from dfagent.registry.credentials import CredentialsError
from dfagent.storage.gc import GarbageCollector
from dfagent.storage.scrub import Scrubber
from dfagent.storage.store import PieceStore
from dfagent.tools import credentials as credential_flags
from dfagent.tools.get import GetFailed, download, parse_target
from dfagent.tools.preheat import NoAgent, describe_job, preheat
from dfagent.tools.text import describe_status

__all__ = ["main"]

log = logging.getLogger("dfagent")

EXIT_FAILED = 1
EXIT_CONFIG = 2  # also a usage error
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

    get = commands.add_parser(
        "get",
        help="download a blob through this node's agent, checked against its digest",
        description="Download one blob through the agent running on this node (an agent is "
        "started in this process when none runs). Resumes FILE.part; exit codes: 0 done, "
        "1 failed, 2 usage, 3 digest mismatch, 4 refused by the registry, 5 not found.",
    )
    get.add_argument("target", help="https://HOST/v2/REPO/blobs/DIGEST or REGISTRY/REPO@DIGEST")
    get.add_argument("--output", "-O", required=True, type=Path, help="file to write")
    get.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    credential_flags.add_arguments(get)

    preheat_cmd = commands.add_parser(
        "preheat",
        help="fetch every blob of an image into every agent's cache",
        description="Resolve IMAGE (tag or digest; index or manifest) and have the running "
        "agent and its swarm fetch the config and every layer (a nydus bootstrap included). "
        "Exit codes: 0 done everywhere, 1 failed, 2 usage.",
    )
    preheat_cmd.add_argument("image", help="[REGISTRY/]REPO[:TAG][@DIGEST]")
    platforms = preheat_cmd.add_mutually_exclusive_group()
    platforms.add_argument(
        "--platform", help="os/arch[/variant][,...] of an index (default: this machine's)"
    )
    platforms.add_argument(
        "--all-platforms", action="store_true", help="every platform an index lists"
    )
    preheat_cmd.add_argument(
        "--no-wait", action="store_true", help="print the job and return at once"
    )
    preheat_cmd.add_argument("--json", action="store_true", help="print the job as JSON")
    credential_flags.add_arguments(preheat_cmd)

    status = commands.add_parser("status", help="cache usage, blobs and pieces")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    gc = commands.add_parser("gc", help="run eviction now (age, then quota)")
    verify = commands.add_parser(
        "verify", help="re-hash every stored piece; exit 1 when any is corrupt"
    )
    verify.add_argument("--repair", action="store_true", help="drop corrupt pieces")
    for maintenance_cmd in (get, preheat_cmd, status, gc, verify):
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
    if args.command == "get":
        return _get(args)
    if args.command == "preheat":
        return _preheat(args)
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
        print(describe_status(answer))
    else:
        print(json.dumps(answer, indent=2))
    if args.command == "verify" and answer["bad"]:
        return EXIT_CORRUPT
    return 0


def _get(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    setup_logging("warning")
    try:
        target = parse_target(args.target, plain_http=args.plain_http)
        credentials = credential_flags.credentials_for(args, target.registry_name)
    except (ValueError, CredentialsError) as exc:
        print(f"dfagent get: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    progress = not args.quiet and sys.stderr.isatty()
    try:
        print(asyncio.run(download(config, target, args.output, credentials, progress=progress)))
    except GetFailed as exc:
        print(f"dfagent get: {exc}", file=sys.stderr)
        return exc.exit_code
    except StartupError as exc:
        print(f"dfagent get: cannot start an agent here: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _preheat(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    body: dict[str, Any] = {"image": args.image, "plain_http": args.plain_http}
    if args.all_platforms:
        body["all_platforms"] = True
    elif args.platform:
        body["platform"] = args.platform
    try:
        request = PreheatRequest.from_json(body)
        credentials = credential_flags.credentials_for(args, request.image.registry)
    except (BadRequest, ValueError, CredentialsError) as exc:
        print(f"dfagent preheat: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    request = replace(request, credentials=credentials)
    progress = not args.json and sys.stderr.isatty()
    directory = Path(config.storage.dir)
    try:
        job = asyncio.run(preheat(directory, request, wait=not args.no_wait, progress=progress))
    except AgentRefused as exc:
        print(f"dfagent preheat: the agent refused: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except NoAgent as exc:
        print(f"dfagent preheat: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(job, indent=2) if args.json else describe_job(job))
    return EXIT_FAILED if job["state"] == "failed" else 0


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
