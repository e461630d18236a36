"""Several nodes on one machine: each in its own network namespace behind a capped link, the
registry in one more; dfagent on every node, in one swarm (the builtin one, or a Dragonfly
cluster's). Needs root (ip netns, tc).

The bench process (root namespace) sits on the bridge uncapped, to set things up and read
each agent's metrics.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.agent import AgentProcess, deep_merge
from tests.support.registry import Registry

NET = "10.77.0"
BRIDGE = "dfb-br"
PEER_PORT = 4000  # the builtin swarm's peer port; Dragonfly's upload port in Dragonfly mode
PROXY_ADDRESS, PROXY_PORT = "127.0.0.1", 4001  # every agent's proxy, in its own namespace
METRICS_PORT = 4002
VORTEX_PORT = 4005  # Dragonfly mode: piece content over Vortex
REGISTRY_PORT = 5000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _netns(name: str, *args: str) -> None:
    subprocess.run(["ip", "netns", "exec", name, *args], check=True)


@dataclass(frozen=True)
class Host:
    name: str
    address: str

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


@contextlib.contextmanager
def topology(nodes: int, node_mbit: int, origin_mbit: int) -> Iterator[tuple[Host, list[Host]]]:
    """A bridge with the origin and `nodes` hosts, each in its own namespace behind a veth
    whose both directions are capped."""
    hosts = [Host("dfb-o", f"{NET}.1")] + [
        Host(f"dfb-n{i}", f"{NET}.{10 + i}") for i in range(nodes)
    ]
    with contextlib.suppress(subprocess.CalledProcessError):
        _teardown(hosts)
    try:
        _ip("link", "add", BRIDGE, "type", "bridge")
        _ip("addr", "add", f"{NET}.254/24", "dev", BRIDGE)
        _ip("link", "set", BRIDGE, "up")
        for host, mbit in zip(hosts, [origin_mbit] + [node_mbit] * nodes, strict=True):
            outside, inside = f"{host.name}-v", f"{host.name}-p"
            _ip("netns", "add", host.name)
            _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
            _ip("link", "set", inside, "netns", host.name)
            _ip("link", "set", outside, "master", BRIDGE, "up")
            _netns(host.name, "ip", "addr", "add", f"{host.address}/24", "dev", inside)
            _netns(host.name, "ip", "link", "set", inside, "up")
            _netns(host.name, "ip", "link", "set", "lo", "up")
            cap(host, mbit)
        yield hosts[0], hosts[1:]
    finally:
        _teardown(hosts)


def cap(host: Host, mbit: int) -> None:
    """Cap both directions of `host`'s link at `mbit`."""
    tbf = ["tbf", "rate", f"{mbit}mbit", "burst", "256kb", "latency", "100ms"]
    _netns(host.name, "tc", "qdisc", "add", "dev", f"{host.name}-p", "root", *tbf)  # sending
    subprocess.run(["tc", "qdisc", "add", "dev", f"{host.name}-v", "root", *tbf], check=True)


def uncap(host: Host) -> None:
    """Lift both caps of `host`'s link."""
    _netns(host.name, "tc", "qdisc", "del", "dev", f"{host.name}-p", "root")
    subprocess.run(["tc", "qdisc", "del", "dev", f"{host.name}-v", "root"], check=True)


def sent_bytes(host: Host) -> int:
    """Bytes `host` has sent over its link, as its interface counts them (headers included)."""
    out = subprocess.run(
        ["ip", "-n", host.name, "-s", "-j", "link", "show", "dev", f"{host.name}-p"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(json.loads(out)[0]["stats64"]["tx"]["bytes"])


def _teardown(hosts: list[Host]) -> None:
    for host in hosts:
        subprocess.run(["ip", "netns", "del", host.name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


@dataclass(frozen=True)
class Network:
    """The topology with the registry running on the origin host."""

    origin: Host
    hosts: list[Host]
    registry: Registry


@contextlib.contextmanager
def network(work: Path, nodes: int, mbit: int) -> Iterator[Network]:
    """`nodes` hosts and the origin, every link capped at `mbit` both ways, the registry up."""
    with topology(nodes, mbit, mbit) as (origin, hosts):
        registry = Registry(
            work / "registry",
            address=origin.address,
            port=REGISTRY_PORT,
            command_prefix=origin.prefix,
        )
        registry.start()
        try:
            yield Network(origin, hosts, registry)
        finally:
            registry.stop()


@dataclass(frozen=True)
class Node:
    host: Host
    agent: AgentProcess

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host.address}:{METRICS_PORT}"


@contextlib.contextmanager
def agents(work: Path, hosts: list[Host], **overrides: object) -> Iterator[list[Node]]:
    """dfagent on every host, all members of one swarm sharing a token; killed on exit."""
    token = work / "token"
    token.write_text("bench-swarm-token-0123456789abcdef")
    members = [f"{h.address}:{PEER_PORT}" for h in hosts]
    swarm = [
        {
            "peer": {"listen": member, "token_file": str(token)},
            "swarm": {"peers": members, "advertise": member},
        }
        for member in members
    ]
    with _started(work, hosts, swarm, overrides) as nodes:
        yield nodes


@contextlib.contextmanager
def dragonfly_agents(
    work: Path, hosts: list[Host], scheduler: str, **overrides: object
) -> Iterator[list[Node]]:
    """dfagent on every host in Dragonfly mode, members of the cluster whose scheduler is at
    `scheduler` (host:port); killed on exit."""
    swarm = [
        {
            "swarm": {"mode": "dragonfly"},
            "dragonfly": {
                "schedulers": [scheduler],
                "ip": host.address,
                "hostname": host.name,
                "upload": f"{host.address}:{PEER_PORT}",
                "vortex": f"{host.address}:{VORTEX_PORT}",
            },
        }
        for host in hosts
    ]
    with _started(work, hosts, swarm, overrides) as nodes:
        yield nodes


@contextlib.contextmanager
def _started(
    work: Path, hosts: list[Host], swarm: list[dict], overrides: dict[str, object]
) -> Iterator[list[Node]]:
    """dfagent on every host, with that host's swarm sections; killed on exit."""
    nodes: list[Node] = []
    try:
        for host, sections in zip(hosts, swarm, strict=True):
            config = {
                "log": {"level": "info"},
                "proxy": {"listen": f"{PROXY_ADDRESS}:{PROXY_PORT}"},
                "health": {"listen": f"{host.address}:4003"},
                "metrics": {"listen": f"{host.address}:{METRICS_PORT}"},
                "storage": {"quota": "8GiB"},
                **sections,
            }
            agent = AgentProcess(
                work / host.name, deep_merge(config, overrides), command_prefix=host.prefix
            )
            nodes.append(Node(host, agent))
            agent.start()
        yield nodes
    finally:
        for node in nodes:
            node.agent.kill()


def run_at_once(commands: list[tuple[Host, list[str]]], timeout: float = 1800) -> list[str]:
    """Start every command in its host's namespace at once; their outputs, in order, once all
    have exited (each must succeed)."""
    processes = [
        subprocess.Popen([*host.prefix, *command], stdout=subprocess.PIPE, text=True)
        for host, command in commands
    ]
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=timeout)
        assert process.returncode == 0, f"{process.args} failed"
        outputs.append(out)
    return outputs
