"""Swarm fill: N agents as hosts in network namespaces, each link capped with tc tbf, all
reading one blob at the same moment; against every node reading straight from the registry.

Reports origin bytes / blob size and fill time / (S/B), the time one node's link needs for
the blob: the bound a perfect swarm approaches whatever N is; then the fill again with every
agent's uploads capped just under the link (`peer.upload_bandwidth`), as the README advises
for links that queue everything in one line. Needs root (ip netns, tc).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from bench import cluster, harness, resources
from bench.report import Bars, Section, at_most, number
from tests.support.metrics import sample_sum

MIB = 1024 * 1024

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


def read_all_at_once(readers: list[tuple[cluster.Host, str, int, str]], digest: str) -> list[float]:
    """Each (host, address, port, target) reads the whole blob at the same moment, from inside
    its host; the seconds each took (the bytes checked against `digest`)."""
    outputs = cluster.run_at_once(
        [
            (host, [sys.executable, "-c", _READER, address, str(port), target, digest])
            for host, address, port, target in readers
        ]
    )
    return [float(out.strip()) for out in outputs]


@dataclass(frozen=True)
class Fill:
    figures: dict[str, float]
    resources: resources.Resources


# The second fill's `peer.upload_bandwidth`, as a share of the link: just under the line, so a
# node's own uploads never queue the acknowledgements of what it downloads (README, "Swarm").
UPLOAD_CAP_SHARE = 0.97


def _per_agent(agents: list[cluster.Node], name: str) -> list[float]:
    """A counter's value at each agent."""
    return [sample_sum(a.metrics_url, name) for a in agents]


def run(
    work: Path, nodes: int = 4, size: int = 512 * MIB, node_mbit: int = 200, piece: int = MIB
) -> Fill:
    """`piece` is the agents' storage.piece_size."""
    harness.clean(work)
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    bound = size / (node_mbit * 1e6 / 8)  # S / B, seconds
    with cluster.network(work, nodes, node_mbit) as net:
        assert net.registry.push_blob("bench/swarm", data) == digest
        del data
        path = f"/v2/bench/swarm/blobs/{digest}"

        direct = read_all_at_once(
            [(h, net.origin.address, cluster.REGISTRY_PORT, path) for h in net.hosts], digest
        )

        through_agents = [
            (h, cluster.PROXY_ADDRESS, cluster.PROXY_PORT, net.registry.url + path)
            for h in net.hosts
        ]
        storage = {"piece_size": piece}
        with cluster.agents(work, net.hosts, storage=storage) as agents:
            meter = resources.Meter(
                "swarm fill", [resources.watched(a.agent, a.metrics_url) for a in agents]
            )
            ticks = resources.machine_ticks()
            through = read_all_at_once(through_agents, digest)
            busy = resources.busy_between(ticks, resources.machine_ticks())
            usage = meter.read()
            from_origin = _per_agent(agents, "dfagent_origin_bytes_total")
            uploaded = _per_agent(agents, "dfagent_uploaded_bytes_total")

        cap = int(UPLOAD_CAP_SHARE * node_mbit * 1e6 / 8)
        (work / "capped").mkdir()
        with cluster.agents(
            work / "capped", net.hosts, storage=storage, peer={"upload_bandwidth": cap}
        ) as agents:
            capped = read_all_at_once(through_agents, digest)
            capped_origin = _per_agent(agents, "dfagent_origin_bytes_total")
            capped_uploaded = _per_agent(agents, "dfagent_uploaded_bytes_total")
        store_cost = resources.store_cost_ms_per_mib(work)
    figures = {
        "nodes": nodes,
        "blob_mib": size / MIB,
        "link_mbit": node_mbit,
        "piece_kib": piece / 1024,
        "bound_s": bound,
        "direct_fill_s": max(direct),
        "direct_fill_vs_bound": max(direct) / bound,
        "direct_origin_bytes_vs_blob": float(nodes),
        "swarm_fill_s": max(through),
        "swarm_fill_vs_bound": max(through) / bound,
        "swarm_first_node_done_s": min(through),
        "swarm_origin_bytes_vs_blob": sum(from_origin) / size,
        # Where the bytes went: the node with most origin fetches, and peer uploads.
        "swarm_top_node_origin_share": max(from_origin) / max(sum(from_origin), 1),
        "swarm_uploaded_bytes_vs_blob": sum(uploaded) / size,
        "swarm_top_node_upload_share": max(uploaded) / max(sum(uploaded), 1),
        # The whole machine's CPU in use during the fill (agents, readers, the kernel's
        # shaping): near 1, the machine rather than the links sets the pace.
        "swarm_machine_cpu_busy": busy,
        # What storing 1 MiB anew costs this machine (see resources.store_cost_ms_per_mib):
        # every node stores the whole blob, so the fill spends nodes x blob MiB of it.
        "machine_store_cpu_ms_per_mib": store_cost,
        "capped_upload_share_of_link": UPLOAD_CAP_SHARE,
        "capped_fill_s": max(capped),
        "capped_fill_vs_bound": max(capped) / bound,
        "capped_origin_bytes_vs_blob": sum(capped_origin) / size,
        "capped_top_node_upload_share": max(capped_uploaded) / max(sum(capped_uploaded), 1),
    }
    return Fill(figures, usage)


def report(result: dict[str, float]) -> str:
    return "\n".join(
        ["| measure | value |", "|---|---|"]
        + [f"| {key} | {number(value)} |" for key, value in result.items()]
    )


def _fill_target(figures: dict[str, float]) -> float:
    """The fill time the swarm is held to: 1.15x S/B up to 4 nodes, 1.25x beyond."""
    return 1.15 if figures["nodes"] <= 4 else 1.25


def section(fill: Fill) -> Section:
    f = fill.figures
    return Section(
        scenario="swarm",
        title=(
            f"Swarm fill: {f['nodes']:.0f} nodes in network namespaces, every link capped at "
            f"{f['link_mbit']:.0f} Mbit/s both ways, one {f['blob_mib']:.0f} MiB blob read by "
            "all nodes at once"
        ),
        table=report(f),
        checks=[
            at_most("origin bytes / S", f["swarm_origin_bytes_vs_blob"], 1.05, "{:.2f}"),
            at_most("fill time / (S/B)", f["swarm_fill_vs_bound"], _fill_target(f), "{:.2f}"),
            at_most(
                f"fill time / (S/B), uploads capped at {UPLOAD_CAP_SHARE:.0%} of the link",
                f["capped_fill_vs_bound"],
                _fill_target(f),
                "{:.2f}",
            ),
            at_most(
                "origin bytes / S, uploads capped",
                f["capped_origin_bytes_vs_blob"],
                1.05,
                "{:.2f}",
            ),
        ],
        plots=(
            Bars(
                "swarm-fill",
                "Swarm fill: time until every node has the blob",
                "seconds",
                ("fill time",),
                {
                    "bound S/B": [f["bound_s"]],
                    "every node to the registry": [f["direct_fill_s"]],
                    "through dfagent": [f["swarm_fill_s"]],
                    "through dfagent, uploads capped": [f["capped_fill_s"]],
                },
            ),
        ),
    )
