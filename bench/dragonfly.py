"""A real Dragonfly cluster on loopback, for side-by-side runs: a standalone scheduler (no
manager: a local dynconfig) and dfdaemons pointing at it, each with its own ports and state.
The binaries (`scheduler` from d7y.io/dragonfly/v2, `dfdaemon` from the dragonfly-client crate)
are found on PATH; `available()` says what is missing."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench import harness
from tests.support.ports import free_port
from tests.support.processes import end

BINARIES = ("scheduler", "dfdaemon")


def available() -> str | None:
    """None when both binaries are on PATH, else what is missing."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    return f"not on PATH: {', '.join(missing)}" if missing else None


@dataclass(frozen=True)
class Daemon:
    name: str
    pid: int
    proxy_port: int
    metrics_port: int
    health_port: int
    tcp_port: int  # Vortex over TCP (storage.server.tcpPort)
    upload_port: int  # the upload gRPC server

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return harness.metric(f"http://127.0.0.1:{self.metrics_port}", name, **labels)


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port}:\n{log.read_text()[-3000:]}")


def _spawn(stack: contextlib.ExitStack, command: list[str], log: Path) -> subprocess.Popen[bytes]:
    output = log.open("wb")
    process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)

    stack.callback(output.close)
    stack.callback(end, process)
    return process


def _scheduler(stack: contextlib.ExitStack, root: Path) -> int:
    root.mkdir(parents=True)
    port, metrics = free_port(), free_port()
    config = {
        "server": {
            "advertiseIP": "127.0.0.1",
            "advertisePort": port,
            "listenIP": "127.0.0.1",
            "port": port,
            "host": "bench-scheduler",
            "logDir": str(root / "log"),
            "pluginDir": str(root / "plugins"),
            "logLevel": "warn",
        },
        "scheduler": {"algorithm": "default", "backToSourceCount": 200, "retryInterval": "1s"},
        "dynConfig": {"refreshInterval": "1m"},
        "job": {"enable": False},
        "metrics": {"enable": True, "addr": f"127.0.0.1:{metrics}", "enableHost": False},
        "network": {"enableIPv6": False},
        "console": False,
        "pprofPort": -1,
    }
    dynconfig = {
        "applications": [],
        "seedPeerClusterConfig": {"loadLimit": 2000},
        "schedulerClusterConfig": {"candidateParentLimit": 3, "filterParentLimit": 15},
        "schedulerClusterClientConfig": {"loadLimit": 200},
    }
    (root / "scheduler.yaml").write_text(yaml.safe_dump(config))
    (root / "dynconfig.yaml").write_text(yaml.safe_dump(dynconfig))
    command = [
        shutil.which("scheduler") or "scheduler",
        "--config", str(root / "scheduler.yaml"),
        "--dynconfig", str(root / "dynconfig.yaml"),
    ]  # fmt: skip
    log = root / "scheduler.log"
    _wait_port(port, _spawn(stack, command, log), log, "the scheduler")
    return port


def _dfdaemon(stack: contextlib.ExitStack, root: Path, name: str, scheduler: int) -> Daemon:
    root.mkdir(parents=True)
    ports = {key: free_port() for key in ("upload", "proxy", "metrics", "health", "stats", "tcp")}
    local = {"ip": "127.0.0.1"}
    config = {
        "host": {"hostname": f"bench-{name}", "ip": "127.0.0.1", "idc": "", "location": ""},
        "server": {"pluginDir": str(root / "plugins"), "cacheDir": str(root / "cache")},
        "download": {
            "protocol": "tcp",
            "server": {"socketPath": str(root / "dfdaemon.sock")},
            "concurrentPieceCount": 10,
        },
        "upload": {"server": {**local, "port": ports["upload"]}, "disableShared": False},
        "scheduler": {"announceInterval": "10s", "scheduleTimeout": "30s"},
        "dynconfig": {"refreshInterval": "1m"},
        "storage": {
            "server": {**local, "tcpPort": ports["tcp"], "quicPort": free_port()},
            "dir": str(root / "storage"),
            "keep": False,
        },
        "proxy": {
            "server": {**local, "port": ports["proxy"]},
            "rules": [{"regex": "blobs/sha256.*"}],
            "registryMirror": {"addr": "http://127.0.0.1:1"},
        },
        "health": {"server": {**local, "port": ports["health"]}},
        "metrics": {"server": {**local, "port": ports["metrics"]}},
        "stats": {"server": {**local, "port": ports["stats"]}},
    }
    dynconfig = {"scheduler": {"addrs": [f"127.0.0.1:{scheduler}"]}}
    (root / "dfdaemon.yaml").write_text(yaml.safe_dump(config))
    (root / "dynconfig.yaml").write_text(yaml.safe_dump(dynconfig))
    command = [
        shutil.which("dfdaemon") or "dfdaemon",
        "--config", str(root / "dfdaemon.yaml"),
        "--dynconfig", str(root / "dynconfig.yaml"),
        "--log-dir", str(root / "log"),
    ]  # fmt: skip
    log = root / "dfdaemon.log"
    process = _spawn(stack, command, log)
    _wait_port(ports["proxy"], process, log, f"dfdaemon {name}")
    return Daemon(
        name,
        process.pid,
        ports["proxy"],
        ports["metrics"],
        ports["health"],
        ports["tcp"],
        ports["upload"],
    )


@contextlib.contextmanager
def cluster(work: Path, daemons: int = 1) -> Iterator[list[Daemon]]:
    """A scheduler and `daemons` dfdaemons, all stopped on exit."""
    with contextlib.ExitStack() as stack:
        scheduler = _scheduler(stack, work / "scheduler")
        yield [
            _dfdaemon(stack, work / f"dfdaemon{i}", f"dfdaemon{i}", scheduler)
            for i in range(daemons)
        ]
