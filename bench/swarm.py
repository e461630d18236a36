"""Swarm fill: N agents as hosts in network namespaces, each link capped with tc tbf, all
reading one blob at the same moment; against every node reading straight from the registry.

Reports origin bytes / blob size and fill time / (S/B), the time one node's link needs for
the blob: the bound a perfect swarm approaches whatever N is. Needs root (ip netns, tc).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import harness
from tests.support.agent import AgentProcess
from tests.support.registry import Registry

MIB = 1024 * 1024
NET = "10.77.0"
BRIDGE = "dfb-br"
PEER_PORT = 4000


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
    whose both directions are capped. The bench process (root namespace) sits on the bridge
    uncapped, to set things up."""
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
            cap = ["tbf", "rate", f"{mbit}mbit", "burst", "256kb", "latency", "100ms"]
            _netns(host.name, "tc", "qdisc", "add", "dev", inside, "root", *cap)  # sending
            subprocess.run(
                ["tc", "qdisc", "add", "dev", outside, "root", *cap], check=True
            )  # receiving
        yield hosts[0], hosts[1:]
    finally:
        _teardown(hosts)


def _teardown(hosts: list[Host]) -> None:
    for host in hosts:
        subprocess.run(["ip", "netns", "del", host.name], capture_output=True, check=False)
    subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True, check=False)


_READER = """
import hashlib, http.client, sys, time
host, port, target, digest = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
started = time.monotonic()
connection = http.client.HTTPConnection(host, port, timeout=600)
connection.request("GET", target)
response = connection.getresponse()
hasher = hashlib.sha256()
while chunk := response.read(1 << 20):
    hasher.update(chunk)
assert response.status == 200 and "sha256:" + hasher.hexdigest() == digest, "bytes differ"
print(time.monotonic() - started)
"""


def _read_all_at_once(readers: list[tuple[Host, str, int, str]], digest: str) -> list[float]:
    processes = [
        subprocess.Popen(
            [*host.prefix, sys.executable, "-c", _READER, address, str(port), target, digest],
            stdout=subprocess.PIPE,
            text=True,
        )
        for host, address, port, target in readers
    ]
    times = []
    for process in processes:
        out, _ = process.communicate(timeout=1800)
        assert process.returncode == 0, "a reader failed"
        times.append(float(out.strip()))
    return times


def run(
    work: Path, nodes: int = 4, size: int = 512 * MIB, node_mbit: int = 200
) -> dict[str, float]:
    harness.clean(work)
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    bound = size / (node_mbit * 1e6 / 8)  # S / B, seconds
    with contextlib.ExitStack() as stack:
        origin, hosts = stack.enter_context(topology(nodes, node_mbit, node_mbit))
        registry = Registry(
            work / "registry", address=origin.address, port=5000, command_prefix=origin.prefix
        )
        registry.start()
        stack.callback(registry.stop)
        assert registry.push_blob("bench/swarm", data) == digest
        del data
        path = f"/v2/bench/swarm/blobs/{digest}"

        direct = _read_all_at_once([(h, origin.address, 5000, path) for h in hosts], digest)

        token = work / "token"
        token.write_text("bench-swarm-token-0123456789abcdef")
        members = [f"{h.address}:{PEER_PORT}" for h in hosts]
        agents = []
        for host, member in zip(hosts, members, strict=True):
            agent = AgentProcess(
                work / host.name,
                {
                    "log": {"level": "info"},
                    "proxy": {"listen": "127.0.0.1:4001"},
                    "health": {"listen": f"{host.address}:4003"},
                    "metrics": {"listen": f"{host.address}:4002"},
                    "storage": {"quota": "8GiB"},
                    "peer": {"listen": member, "token_file": str(token)},
                    "swarm": {"peers": members, "advertise": member},
                },
                command_prefix=host.prefix,
            ).start()
            stack.callback(agent.kill)
            agents.append(agent)
        target = f"http://{origin.address}:5000{path}"
        through = _read_all_at_once([(h, "127.0.0.1", 4001, target) for h in hosts], digest)
        origin_bytes = sum(
            harness.metric(f"http://{h.address}:4002", "dfagent_origin_bytes_total") for h in hosts
        )
    return {
        "nodes": nodes,
        "blob_mib": size / MIB,
        "link_mbit": node_mbit,
        "bound_s": bound,
        "direct_fill_s": max(direct),
        "direct_fill_vs_bound": max(direct) / bound,
        "direct_origin_bytes_vs_blob": float(nodes),
        "swarm_fill_s": max(through),
        "swarm_fill_vs_bound": max(through) / bound,
        "swarm_origin_bytes_vs_blob": origin_bytes / size,
    }


def report(result: dict[str, float]) -> str:
    return "\n".join(
        ["| measure | value |", "|---|---|"]
        + [f"| {key} | {value:,.2f} |" for key, value in result.items()]
    )
