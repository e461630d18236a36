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
from dfagent.control import AgentLost, AgentNotPermitted, AgentRefused, call_agent
from dfagent.errors import BadRequest, ConfigError, DfagentError, StartupError
from dfagent.logs import setup_logging
from dfagent.maintenance import Maintenance
from dfagent.metrics import Metrics
from dfagent.preheat.request import PreheatRequest
from dfagent.registry.credentials import CredentialsError
from dfagent.storage.gc import GarbageCollector
from dfagent.storage.scrub import Scrubber
from dfagent.storage.store import PieceStore
from dfagent.tools import credentials as credential_flags
from dfagent.tools.get import GetFailed, check_output, download, parse_target, part_of
from dfagent.tools.locate import CONFIG_ENV, DEFAULT_CONFIG, ConfigChoice, choose_config
from dfagent.tools.preheat import NoAgent, describe_job, follow, submit
from dfagent.tools.text import describe_gc, describe_status, describe_verify

__all__ = ["main"]

log = logging.getLogger("dfagent")

EXIT_FAILED = 1
EXIT_USAGE = 2  # a bad argument, flag or config file
EXIT_CORRUPT = 1
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT)

EXITS = {
    "run": "0 stopped by SIGTERM or SIGINT, 1 cannot start (the message names the key to "
    "change: a port in use, an unusable storage.dir, an unreadable token or certificate), "
    "2 invalid config",
    "get": "0 done (or FILE already held the blob), 1 failed (agent, registry or FILE), "
    "2 usage (target, flags, -O path, config), 3 the bytes do not match the digest, "
    "4 refused by the registry (401/403), 5 not found, 130 interrupted (FILE.part is kept "
    "and resumed by the same command)",
    "preheat": "0 every blob reached every agent, 1 failed (or no agent runs, or it stopped "
    "answering), 2 usage (reference, flags, config, or the agent refused the request), "
    "130 interrupted (the job goes on in the agent)",
    "status": "0 shown, 1 no agent runs and the cache cannot be opened (or the agent stopped "
    "answering), 2 invalid or unreadable config, 130 interrupted",
    "gc": "0 done, 1 no agent runs and the cache cannot be opened (or the agent stopped "
    "answering), 2 invalid or unreadable config, 130 interrupted",
    "verify": "0 every piece matches, 1 corrupt pieces found (or the cache cannot be opened, or "
    "the agent stopped answering), 2 invalid or unreadable config, 130 interrupted",
    "config check": "0 valid (the effective config is printed), 2 invalid or unreadable",
}


def _exit_codes(command: str) -> str:
    return f"exit codes: {EXITS[command]}"


class CommandFailed(DfagentError):
    """What a subcommand prints as its one-line error, and the exit code it returns."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    name = "dfagent config check" if args.command == "config" else f"dfagent {args.command}"
    if args.command != "run":
        setup_logging("error")  # a tool speaks in its own lines; an agent it starts, of faults
    try:
        return _COMMANDS[args.command](args)
    except CommandFailed as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return exc.exit_code
    except (AgentNotPermitted, AgentLost) as exc:  # from any command that asks the agent
        print(f"{name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dfagent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"dfagent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser(
        "run",
        help="run the agent (embedded single-node default without --config)",
        epilog=_exit_codes("run"),
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
        "started in this process when none runs). Resumes FILE.part.",
        epilog=_exit_codes("get"),
    )
    get.add_argument("target", help="https://HOST/v2/REPO/blobs/DIGEST or REGISTRY/REPO@DIGEST")
    get.add_argument("--output", "-O", required=True, type=Path, help="file to write")
    get.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    credential_flags.add_arguments(get)

    preheat_cmd = commands.add_parser(
        "preheat",
        help="fetch every blob of an image into every agent's cache",
        description="Resolve IMAGE (tag or digest; index or manifest) and have the running "
        "agent and its swarm fetch the config and every layer (a nydus bootstrap included).",
        epilog=_exit_codes("preheat"),
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

    status = commands.add_parser(
        "status", help="cache usage, blobs and pieces", epilog=_exit_codes("status")
    )
    gc = commands.add_parser(
        "gc", help="run eviction now (age, then quota)", epilog=_exit_codes("gc")
    )
    verify = commands.add_parser(
        "verify",
        help="re-hash every stored piece; exit 1 when any is corrupt",
        epilog=_exit_codes("verify"),
    )
    verify.add_argument("--repair", action="store_true", help="drop corrupt pieces")
    for maintenance_cmd in (status, gc, verify):
        maintenance_cmd.add_argument("--json", action="store_true", help="machine-readable output")
    for agent_cmd in (get, preheat_cmd, status, gc, verify):
        agent_cmd.add_argument(
            "--config",
            "-c",
            help=f"the agent's config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG} "
            "when it exists, else the embedded default)",
        )

    config_cmd = commands.add_parser("config", help="inspect configuration")
    config_sub = config_cmd.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="print the effective config, or every error in it",
        epilog=_exit_codes("config check"),
    )
    check.add_argument("file")
    return parser


def _load(path: str | None) -> Config:
    """The config in `path` (None: the embedded default); CommandFailed when unusable."""
    try:
        return load(path)
    except ConfigError as exc:
        if [field for field, _ in exc.problems] == ["<file>"]:
            raise CommandFailed(exc.problems[0][1], EXIT_USAGE) from None
        lines = [f"invalid config {path}:"] + [f"  {f}: {reason}" for f, reason in exc.problems]
        raise CommandFailed("\n".join(lines), EXIT_USAGE) from None


def _agent_config(args: argparse.Namespace) -> tuple[Config, ConfigChoice]:
    """The config of the agent this command talks to, and how it was chosen."""
    choice = choose_config(args.config)
    return _load(choice.path), choice


def _where(choice: ConfigChoice) -> str:
    """Where a command looked for the agent, for the message that says none was found."""
    looked = f"; looked at {', '.join(choice.looked)}" if choice.looked else ""
    return f"storage.dir of {choice.named}{looked}"


def _check(args: argparse.Namespace) -> int:
    sys.stdout.write(dump(_load(args.file)))
    return 0


def _run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    setup_logging(config.log.level)
    _raise_open_file_limit()
    if args.loop == "uvloop":
        import uvloop

        runner = uvloop.run
    else:
        runner = asyncio.run
    try:
        runner(_serve(config))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return EXIT_FAILED
    return 0


def _maintain(args: argparse.Namespace) -> int:
    config, choice = _agent_config(args)
    directory = Path(config.storage.dir)
    if not directory.is_dir():
        hint = "" if choice.path else f": give the agent's config with -c FILE or ${CONFIG_ENV}"
        raise CommandFailed(
            f"no agent runs and no cache is at {directory} ({_where(choice)}){hint}"
        )
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
    except (StartupError, AgentRefused) as exc:
        raise CommandFailed(str(exc)) from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise CommandFailed(f"cannot open the cache at {directory}: {reason}") from None
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        describe = {"status": describe_status, "gc": describe_gc, "verify": describe_verify}
        print(describe[args.command](answer))
    if args.command == "verify" and answer["bad"]:
        return EXIT_CORRUPT
    return 0


def _get(args: argparse.Namespace) -> int:
    config, _ = _agent_config(args)
    try:
        target = parse_target(args.target, plain_http=args.plain_http)
        check_output(args.output)
        credentials = credential_flags.credentials_for(args, target.registry_name)
    except (ValueError, CredentialsError) as exc:
        raise CommandFailed(str(exc), EXIT_USAGE) from None
    progress = not args.quiet and sys.stderr.isatty()
    try:
        print(asyncio.run(download(config, target, args.output, credentials, progress=progress)))
    except GetFailed as exc:
        raise CommandFailed(str(exc), exc.exit_code) from None
    except StartupError as exc:
        raise CommandFailed(f"cannot start an agent here: {exc}") from None
    except AgentRefused as exc:
        raise CommandFailed(f"the agent refused: {exc}") from None
    except KeyboardInterrupt:
        part = part_of(args.output)
        kept = f"; {part} is kept: the same command resumes it" if part.exists() else ""
        raise CommandFailed(f"interrupted{kept}", EXIT_INTERRUPTED) from None
    return 0


def _preheat(args: argparse.Namespace) -> int:
    config, choice = _agent_config(args)
    body: dict[str, Any] = {"image": args.image, "plain_http": args.plain_http}
    if args.all_platforms:
        body["all_platforms"] = True
    elif args.platform:
        body["platform"] = args.platform
    try:
        request = PreheatRequest.from_json(body)
        credentials = credential_flags.credentials_for(args, request.image.registry)
    except (BadRequest, ValueError, CredentialsError) as exc:
        raise CommandFailed(str(exc), EXIT_USAGE) from None
    request = replace(request, credentials=credentials)
    progress = not args.json and sys.stderr.isatty()
    directory = Path(config.storage.dir)
    try:
        job = asyncio.run(submit(directory, request))
    except AgentRefused as exc:
        raise CommandFailed(f"the agent refused: {exc}", EXIT_USAGE) from None
    except NoAgent as exc:
        raise CommandFailed(
            f"{exc} ({_where(choice)}): preheat fills a running agent's cache; start it with "
            "dfagent run"
        ) from None
    try:
        if not args.no_wait:
            job = asyncio.run(follow(directory, job, progress=progress))
    except (NoAgent, AgentRefused, AgentLost) as exc:
        raise CommandFailed(f"preheat {job['id']}: {exc}") from None
    except KeyboardInterrupt:
        raise CommandFailed(
            f"interrupted; preheat {job['id']} goes on in the agent (dfagent status shows it)",
            EXIT_INTERRUPTED,
        ) from None
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


_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": _run,
    "get": _get,
    "preheat": _preheat,
    "status": _maintain,
    "gc": _maintain,
    "verify": _maintain,
    "config": _check,
}


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
