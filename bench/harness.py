"""Setting up what a benchmark compares: the registry, dfagent, nginx; and running wrk."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.agent import AgentProcess, deep_merge
from tests.support.ports import free_port
from tests.support.registry import Registry
from tests.support.tools import require

HERE = Path(__file__).parent


@contextlib.contextmanager
def registry(work: Path) -> Iterator[Registry]:
    reg = Registry(work / "registry").start()
    try:
        yield reg
    finally:
        reg.stop()


@contextlib.contextmanager
def agent(work: Path, name: str, *args: str, **overrides: object) -> Iterator[AgentProcess]:
    base = {"log": {"level": "info"}, "storage": {"quota": "8GiB"}}
    process = AgentProcess(work / name, deep_merge(base, overrides), list(args)).start()
    try:
        yield process
    finally:
        process.stop()


@contextlib.contextmanager
def nginx(
    work: Path, files: Path, address: str = "127.0.0.1", prefix: Sequence[str] = ()
) -> Iterator[int]:
    """nginx serving `files` on a free port at `address` (started with `prefix`, e.g. in a
    network namespace): the practical limit for cache hits."""
    binary = require("nginx")
    root = work / "nginx"
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    # Workers read the files as this user: the work tree may sit in a root-only directory.
    user = "user root;" if os.geteuid() == 0 else ""
    (root / "nginx.conf").write_text(
        f"""
{user}
worker_processes auto;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
daemon off;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {root};
    proxy_temp_path {root};
    fastcgi_temp_path {root};
    uwsgi_temp_path {root};
    scgi_temp_path {root};
    server {{
        listen {address}:{port};
        root {files};
    }}
}}
"""
    )
    process = subprocess.Popen([*prefix, binary, "-c", str(root / "nginx.conf"), "-p", str(root)])
    try:
        _wait_port(address, port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def _wait_port(address: str, port: int) -> None:
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((address, port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {address}:{port}")


@dataclass(frozen=True)
class WrkResult:
    requests_per_second: float  # every response, refusals included
    p50_ms: float
    p99_ms: float
    errors: int  # answers the script did not expect, and socket errors
    ok_per_second: float  # expected answers only


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk(
    port: int,
    target: str,
    size: int,
    range_length: int,
    connections: int,
    seconds: float,
    address: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> WrkResult:
    """wrk's random ranges against `address:port` (run with `prefix`, e.g. in a network
    namespace)."""
    settings = {"TARGET": target, "BLOB_SIZE": str(size), "RANGE_LEN": str(range_length)}
    return wrk_script(
        HERE / "random_range.lua", settings, port, connections, seconds, address, prefix
    )


def wrk_script(
    script: Path,
    settings: dict[str, str],
    port: int,
    connections: int,
    seconds: float,
    address: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> WrkResult:
    """wrk running `script` (which reads `settings` from its environment, and writes
    "unexpected status" to stderr for every answer it did not expect) against `address:port`."""
    binary = require("wrk")
    result = subprocess.run(
        [
            *prefix, binary, "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s",
            "--latency", "-s", str(script), f"http://{address}:{port}/",
        ],
        capture_output=True, text=True, env={**os.environ, **settings}, check=True,
    )  # fmt: skip
    out = result.stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        assert match, out
        return float(match.group(1)) * _UNITS[match.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    done = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    assert rate and done, out
    # The script reports every unexpected answer (a superset of wrk's non-2xx/3xx count).
    refused = len(re.findall("unexpected status", result.stderr))
    errors = refused
    socket_errors = re.search(r"Socket errors: (.*)", out)
    if socket_errors:
        errors += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    ok = (int(done.group(1)) - refused) / (float(done.group(2)) * _UNITS[done.group(3)] / 1000)
    return WrkResult(float(rate.group(1)), latency("50%"), latency("99%"), errors, ok)


def percentile(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]
        if len(values) > 1
        else values[0]
    )


_made: list[Path] = []  # work directories made since the last settle_work()


def clean(path: Path) -> Path:
    """An empty work directory at `path` (what an earlier run left there goes)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    _made.append(path)
    return path


def settle_work(*, keep: bool) -> None:
    """Once a scenario ends: remove the work directories it made (blobs, caches and logs of
    several GiB), unless `keep` (it failed, and its logs say why; or the user asked)."""
    while _made:
        path = _made.pop()
        if not keep:
            shutil.rmtree(path, ignore_errors=True)
