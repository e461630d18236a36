"""A real Dragonfly cluster on loopback, for tests and benchmarks: a standalone scheduler (no
manager: a local dynconfig) and dfdaemons pointing at it, each with its own ports, state and
logs under one root directory, and dfget run against any one of them. A benchmark may place
each program elsewhere (`Place`: in a network namespace, bound to that host's address).

The programs (`scheduler` from d7y.io/dragonfly/v2, `dfdaemon` and `dfget` from the crate
dragonfly-client) are installed by ./test.sh and found with `tools.require`.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.agent import deep_merge
from tests.support.metrics import sample_sum
from tests.support.ports import free_ports
from tests.support.processes import end
from tests.support.tools import find, require

BINARIES = ("scheduler", "dfdaemon", "dfget")

# The scheduler learns which hosts are seed peers on a fixed 30 s tick (SeedPeerRefreshInterval
# in scheduler/resource/standard/seed_peer.go: neither its config nor its dynconfig sets it),
# counted from its start; until then it never asks a seed to fetch a task.
SEED_REFRESH_SECONDS = 30.0
_UNIX_PATH_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_TAIL_LINES = 30
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")  # dfget colours its console output


def available() -> str | None:
    """None when every Dragonfly program is installed, else what is missing."""
    missing = [name for name in BINARIES if find(name) is None]
    return f"not installed: {', '.join(missing)}" if missing else None


class ClusterError(RuntimeError):
    """A Dragonfly program failed or did not come up; the message ends with its logs' tails."""


@dataclass(frozen=True)
class Place:
    """Where a program runs: the address every server of it binds (and the cluster knows it
    by), and the command prefix that starts it there (e.g. `ip netns exec NAME`)."""

    address: str = "127.0.0.1"
    prefix: tuple[str, ...] = ()


LOOPBACK = Place()


def _plain(text: str) -> str:
    return _COLOUR.sub("", text)


def _tails(root: Path) -> str:
    """The last lines of the logs of the program whose directory is `root`: what it printed
    (console.log) and the log files it wrote itself under `log/` (the scheduler's core.log and
    stderr.log, dfdaemon's dfdaemon.log)."""
    parts = []
    for log in sorted([*root.glob("*.log"), *(root / "log").rglob("*.log")]):
        lines = _plain(log.read_text(errors="replace")).splitlines()[-_TAIL_LINES:]
        if lines:
            parts.append(f"--- {log} (last {len(lines)} lines)\n" + "\n".join(lines))
    return "\n".join(parts) or f"(no logs under {root})"


def _spawn(command: list[str], root: Path, place: Place) -> subprocess.Popen[bytes]:
    with (root / "console.log").open("wb") as output:
        return subprocess.Popen([*place.prefix, *command], stdout=output, stderr=subprocess.STDOUT)


def _wait_until_up(
    process: subprocess.Popen[bytes],
    root: Path,
    what: str,
    address: str,
    ports: list[int],
    *paths: Path,
) -> None:
    """Wait until every one of `ports` at `address` accepts connections and every one of
    `paths` exists."""
    deadline = time.monotonic() + 60
    waiting = list(ports)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"{what} exited {process.returncode}:\n{_tails(root)}")
        with contextlib.suppress(OSError):
            while waiting:
                socket.create_connection((address, waiting[0]), 0.5).close()
                waiting.pop(0)
        if not waiting and all(path.exists() for path in paths):
            return
        time.sleep(0.1)
    raise ClusterError(f"{what} did not come up in 60 s (ports {ports}):\n{_tails(root)}")


@dataclass
class Scheduler:
    root: Path
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    started: float  # time.monotonic() when it answered on its port
    ip: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.ip}:{self.port}"

    def logs(self) -> str:
        return _tails(self.root)


@dataclass
class Daemon:
    """A running dfdaemon: its servers on `ip` (loopback unless placed elsewhere), its state
    and logs under `root`."""

    name: str
    root: Path
    process: subprocess.Popen[bytes]
    upload_port: int  # gRPC: DfdaemonUpload (SyncPieces, ...) and health
    tcp_port: int  # Vortex over TCP: piece content
    quic_port: int
    proxy_port: int
    metrics_port: int
    health_port: int
    stats_port: int
    seed: bool = False
    ip: str = "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def socket(self) -> Path:
        """The unix socket of its download gRPC service, which dfget talks to."""
        return self.root / "dfdaemon.sock"

    @property
    def upload_address(self) -> str:
        return f"{self.ip}:{self.upload_port}"

    @property
    def proxy_url(self) -> str:
        return f"http://{self.ip}:{self.proxy_port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.ip}:{self.health_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.ip}:{self.metrics_port}"

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        return sample_sum(self.metrics_url, name, **labels)

    def kill(self) -> None:
        """SIGKILL: it stops at once, telling the scheduler nothing."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """SIGTERM: it shuts down its servers and deletes its host from the scheduler."""
        end(self.process)

    def logs(self) -> str:
        return _tails(self.root)

    def dfget(
        self, url: str, out: Path, *args: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Download `url` to `out` with the real dfget through this daemon; ClusterError with
        dfget's output and this daemon's logs when it fails."""
        command = [
            require("dfget"), url, "--output", str(out), "--endpoint", str(self.socket),
            "--no-progress", "--console", *args,
        ]  # fmt: skip
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise ClusterError(
                f"dfget {url} through {self.name} took over {timeout} s:\n{self.logs()}"
            ) from exc
        if result.returncode != 0:
            raise ClusterError(
                f"dfget {url} through {self.name} exited {result.returncode}:\n"
                f"{_plain(result.stdout + result.stderr)[-3000:]}\n{self.logs()}"
            )
        return result


@dataclass
class Cluster:
    root: Path
    scheduler: Scheduler
    daemons: list[Daemon] = field(default_factory=list)
    seed: Daemon | None = None  # a seed peer (host type super), when asked for

    @property
    def scheduler_address(self) -> str:
        return self.scheduler.address

    def logs(self) -> str:
        """Every program's log tails, for a failing test's message."""
        daemons = [self.seed, *self.daemons] if self.seed else self.daemons
        return "\n".join([self.scheduler.logs(), *(daemon.logs() for daemon in daemons)])


def _start_scheduler(
    stack: contextlib.ExitStack, root: Path, log_level: str, place: Place
) -> Scheduler:
    root.mkdir(parents=True)
    port, metrics = free_ports(2)
    config = {
        "server": {
            "advertiseIP": place.address,
            "advertisePort": port,
            "listenIP": place.address,
            "port": port,
            "host": "df-scheduler",
            "logDir": str(root / "log"),
            "pluginDir": str(root / "plugins"),
            "logLevel": log_level,
        },
        "scheduler": {"algorithm": "default", "backToSourceCount": 200, "retryInterval": "1s"},
        "dynConfig": {"refreshInterval": "1m"},
        "job": {"enable": False},
        "metrics": {"enable": True, "addr": f"{place.address}:{metrics}", "enableHost": False},
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
        require("scheduler"),
        "--config", str(root / "scheduler.yaml"),
        "--dynconfig", str(root / "dynconfig.yaml"),
    ]  # fmt: skip
    process = _spawn(command, root, place)
    stack.callback(end, process)
    _wait_until_up(process, root, "the scheduler", place.address, [port])
    return Scheduler(root, process, port, metrics, time.monotonic(), place.address)


def _start_daemon(
    stack: contextlib.ExitStack,
    root: Path,
    name: str,
    scheduler: str,
    *,
    seed: bool,
    place: Place,
    extra: dict[str, Any] | None = None,
) -> Daemon:
    root.mkdir(parents=True)
    if len(str(root / "dfdaemon.sock")) > _UNIX_PATH_MAX:
        raise ClusterError(f"{root} is too long a path for dfdaemon's unix socket in it")
    keys = ("upload", "tcp", "quic", "proxy", "metrics", "health", "stats")
    ports = dict(zip(keys, free_ports(len(keys)), strict=True))
    local = {"ip": place.address}
    config: dict[str, object] = {
        # the host id is ip-hostname: every daemon on this machine needs a hostname of its own
        "host": {"hostname": f"df-{name}", "ip": place.address, "idc": "", "location": ""},
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
            "server": {**local, "tcpPort": ports["tcp"], "quicPort": ports["quic"]},
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
    if seed:
        config["seedPeer"] = {"enable": True, "type": "super"}
    config = deep_merge(config, extra or {})
    (root / "dfdaemon.yaml").write_text(yaml.safe_dump(config))
    (root / "dynconfig.yaml").write_text(yaml.safe_dump({"scheduler": {"addrs": [scheduler]}}))
    command = [
        require("dfdaemon"),
        "--config", str(root / "dfdaemon.yaml"),
        "--dynconfig", str(root / "dynconfig.yaml"),
        "--log-dir", str(root / "log"),
    ]  # fmt: skip
    process = _spawn(command, root, place)
    stack.callback(end, process)
    listening = [ports[key] for key in ("upload", "tcp", "proxy", "metrics", "health")]
    _wait_until_up(
        process, root, f"dfdaemon {name}", place.address, listening, root / "dfdaemon.sock"
    )
    return Daemon(
        name,
        root,
        process,
        upload_port=ports["upload"],
        tcp_port=ports["tcp"],
        quic_port=ports["quic"],
        proxy_port=ports["proxy"],
        metrics_port=ports["metrics"],
        health_port=ports["health"],
        stats_port=ports["stats"],
        seed=seed,
        ip=place.address,
    )


def wait_for_seed_refresh(scheduler: Scheduler, seed_up: float) -> None:
    """Sleep past the scheduler's first seed refresh after the seed (a dfdaemon, or a dfagent
    with `dragonfly.seed`) announced itself at `seed_up` (time.monotonic()), plus a second
    for the refresh's health check of the seed."""
    ticks = int((seed_up - scheduler.started) // SEED_REFRESH_SECONDS) + 1
    time.sleep(max(0.0, scheduler.started + ticks * SEED_REFRESH_SECONDS + 1 - time.monotonic()))


@contextlib.contextmanager
def cluster(
    root: Path,
    daemons: int = 1,
    *,
    seed: bool = False,
    log_level: str = "info",
    daemon_config: dict[str, Any] | None = None,
    scheduler_at: Place = LOOPBACK,
    daemons_at: Sequence[Place] = (),
) -> Iterator[Cluster]:
    """A scheduler (logging at `log_level`) and `daemons` dfdaemons (`dfdaemon0`, ...), with a
    seed peer first when `seed` (then this waits, up to 31 s, until the scheduler uses it);
    every program is stopped on exit. `daemon_config` is merged into each dfdaemon's (seed
    included) config, e.g. `{"upload": {"bandwidthLimit": "16MiB"}}`. Each runs on loopback
    unless placed: the scheduler at `scheduler_at`, the dfdaemons at `daemons_at` (one place
    each, the seed's first)."""
    wanted = daemons + seed
    if daemons_at and len(daemons_at) != wanted:
        raise ValueError(f"daemons_at: {len(daemons_at)} places for {wanted} dfdaemons")
    places = iter(daemons_at or [LOOPBACK] * wanted)
    with contextlib.ExitStack() as stack:
        scheduler = _start_scheduler(stack, root / "scheduler", log_level, scheduler_at)
        running = Cluster(root, scheduler)
        if seed:
            running.seed = _start_daemon(
                stack,
                root / "seed",
                "seed",
                scheduler.address,
                seed=True,
                place=next(places),
                extra=daemon_config,
            )
        seed_up = time.monotonic()
        for i in range(daemons):
            name = f"dfdaemon{i}"
            running.daemons.append(
                _start_daemon(
                    stack,
                    root / name,
                    name,
                    scheduler.address,
                    seed=False,
                    place=next(places),
                    extra=daemon_config,
                )
            )
        if seed:
            wait_for_seed_refresh(scheduler, seed_up)
        yield running
