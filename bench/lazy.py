"""Swarm lazy: N nodes reading the same image lazily, as nydusd does; against every node
reading straight from the registry. Same topology as the swarm fill (bench.cluster).

The trace: random ranges of about 1 MiB (3/4 to 5/4 MiB, 4 KiB aligned, none overlapping)
over `coverage` of a blob. Every node reads the same ranges, in its own shuffled order, with
`readers` concurrent readers. The aim is one origin fetch per piece per cluster: origin piece
fetches / distinct pieces touched near 1, where nodes reading on their own come to about N.

The slowest reads are the first ones, when every reader starts at once on a shaped link, and
which node the link starves then changes from run to run: one replay's p99 moved from 0.96 s
to 4.4 s going direct. So the trace is replayed in `rounds`, each path once per round in
turn, every node in a new order and the agents on empty caches each time; the percentiles
pool every round's reads. Needs root (ip netns, tc).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bench import cluster, harness
from bench.harness import percentile
from bench.report import Bars, Cdf, Section, at_most, info
from tests.support.metrics import sample_sum

MIB = 1024 * 1024
PIECE = MIB  # the agents' storage.piece_size, unless told otherwise
_ALIGN = 4096
_READER = Path(__file__).with_name("trace_reader.py")


@dataclass(frozen=True)
class Read:
    first: int
    length: int

    def pieces(self, piece: int = PIECE) -> range:
        return range(self.first // piece, (self.first + self.length - 1) // piece + 1)


def make_trace(size: int, coverage: float, rng: random.Random) -> list[Read]:
    """Non-overlapping ranges of about 1 MiB at random places, `coverage` of `size` in all."""
    assert 0 < coverage <= 0.5, "coverage must leave room to place ranges at random"
    reads: list[Read] = []
    covered = 0
    while covered < coverage * size:
        length = rng.randrange(3 * MIB // 4, 5 * MIB // 4 + 1, _ALIGN)
        first = rng.randrange(0, size - length + 1, _ALIGN)
        if any(first < r.first + r.length and r.first < first + length for r in reads):
            continue
        reads.append(Read(first, length))
        covered += length
    return reads


@dataclass(frozen=True)
class Replay:
    """Every node's replay of the trace, and what the origin saw."""

    latencies_ms: list[float]  # every read of every round
    round_p99_ms: list[float]
    seconds: float  # until the last node had read its whole trace, in the slowest round
    # What the origin saw, per round: ranged GETs, pieces it delivered (direct: the pieces
    # each read spans), bytes.
    origin_requests: float
    origin_piece_fetches: float
    origin_bytes: float


@dataclass(frozen=True)
class Lazy:
    nodes: int
    blob_mib: float
    link_mbit: int
    readers: int
    reads: int  # per node
    rounds: int
    piece: int  # the agents' storage.piece_size
    trace_mib: float  # what one node reads
    distinct_pieces: int
    direct: Replay
    swarm: Replay


@dataclass
class _Rounds:
    """One path's replays so far."""

    latencies_ms: list[float] = field(default_factory=list)
    round_p99_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    origin_requests: float = 0.0  # summed over the rounds, as are the two below
    origin_piece_fetches: float = 0.0
    origin_bytes: float = 0.0

    def replay(
        self,
        hosts: list[cluster.Host],
        traces: list[Path],
        address: str,
        port: int,
        target: str,
        readers: int,
    ) -> None:
        command = [sys.executable, str(_READER), address, str(port), target]
        outputs = cluster.run_at_once(
            [
                (host, [*command, str(trace), str(readers)])
                for host, trace in zip(hosts, traces, strict=True)
            ]
        )
        results = [json.loads(out) for out in outputs]
        latencies = [ms for r in results for ms in r["latencies_ms"]]
        self.latencies_ms += latencies
        self.round_p99_ms.append(percentile(latencies, 99))
        self.seconds = max(self.seconds, *(r["seconds"] for r in results))

    def count(self, requests: float, piece_fetches: float, size: float) -> None:
        self.origin_requests += requests
        self.origin_piece_fetches += piece_fetches
        self.origin_bytes += size

    def done(self, rounds: int) -> Replay:
        return Replay(
            self.latencies_ms,
            self.round_p99_ms,
            self.seconds,
            self.origin_requests / rounds,
            self.origin_piece_fetches / rounds,
            self.origin_bytes / rounds,
        )


def run(
    work: Path,
    nodes: int = 4,
    size: int = 512 * MIB,
    node_mbit: int = 200,
    coverage: float = 0.15,
    readers: int = 4,
    seed: int = 8,
    rounds: int = 3,
    piece: int = PIECE,
    max_uploads: int | None = None,
) -> Lazy:
    harness.clean(work)
    rng = random.Random(seed)
    data = os.urandom(size)
    trace = make_trace(size, coverage, rng)
    entries = [
        [r.first, r.length, hashlib.sha256(data[r.first : r.first + r.length]).hexdigest()]
        for r in trace
    ]
    spans = sum(
        len(r.pieces(piece)) for r in trace
    )  # pieces one node's reads span, repeats counted
    trace_bytes = sum(r.length for r in trace)
    direct, swarm = _Rounds(), _Rounds()
    overrides: dict[str, dict[str, object]] = {"storage": {"piece_size": piece}}
    if max_uploads is not None:
        overrides["peer"] = {"max_uploads": max_uploads}
    with cluster.network(work, nodes, node_mbit) as net:
        digest = net.registry.push_blob("bench/lazy", data)
        del data
        path = f"/v2/bench/lazy/blobs/{digest}"
        for round_ in range(rounds):
            here = work / f"round-{round_}"
            here.mkdir()
            traces = []
            for i in range(nodes):
                order = entries.copy()
                rng.shuffle(order)
                traces.append(here / f"trace-{i}.json")
                traces[-1].write_text(json.dumps(order))

            direct.replay(
                net.hosts, traces, net.origin.address, cluster.REGISTRY_PORT, path, readers
            )
            direct.count(nodes * len(trace), nodes * spans, nodes * trace_bytes)

            with cluster.agents(here, net.hosts, **overrides) as agents:
                swarm.replay(
                    net.hosts,
                    traces,
                    cluster.PROXY_ADDRESS,
                    cluster.PROXY_PORT,
                    net.registry.url + path,
                    readers,
                )

                def total(name: str, **labels: str) -> float:
                    return sum(sample_sum(a.metrics_url, name, **labels) for a in agents)

                swarm.count(
                    total("dfagent_origin_requests_total", purpose="range"),
                    total("dfagent_piece_fetch_seconds_count", source="origin"),
                    total("dfagent_origin_bytes_total"),
                )
    return Lazy(
        nodes=nodes,
        blob_mib=size / MIB,
        link_mbit=node_mbit,
        readers=readers,
        reads=len(trace),
        rounds=rounds,
        piece=piece,
        trace_mib=trace_bytes / MIB,
        distinct_pieces=len({i for r in trace for i in r.pieces(piece)}),
        direct=direct.done(rounds),
        swarm=swarm.done(rounds),
    )


def _fetches_per_piece(result: Lazy, replay: Replay) -> float:
    return replay.origin_piece_fetches / result.distinct_pieces


def report(result: Lazy) -> str:
    lines = [
        f"Each node reads {result.reads} ranges ({result.trace_mib:.0f} MiB, "
        f"{result.trace_mib / result.blob_mib:.0%} of the blob) with {result.readers} readers; "
        f"they touch {result.distinct_pieces} distinct {result.piece // 1024} KiB pieces. "
        f"{result.rounds} rounds, each path once per round in turn (direct first); the "
        "percentiles pool every round's reads, the origin figures are per round.",
        "",
        "| path | read p50 ms | read p99 ms | p99 in each round, ms | slowest node s | "
        "origin GETs | origin MiB | origin piece fetches / distinct pieces |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, replay in (
        ("every node straight to the registry", result.direct),
        ("through dfagent (builtin swarm)", result.swarm),
    ):
        lines.append(
            f"| {name} | {percentile(replay.latencies_ms, 50):.1f} | "
            f"{percentile(replay.latencies_ms, 99):.1f} | "
            f"{', '.join(f'{ms:.0f}' for ms in replay.round_p99_ms)} | {replay.seconds:.2f} | "
            f"{replay.origin_requests:,.0f} | {replay.origin_bytes / MIB:,.0f} | "
            f"{_fetches_per_piece(result, replay):.2f} |"
        )
    return "\n".join(lines)


def section(result: Lazy) -> Section:
    direct, swarm = result.direct, result.swarm

    def latency(q: float) -> str:
        return (
            f"{percentile(swarm.latencies_ms, q):.1f} ms "
            f"(direct {percentile(direct.latencies_ms, q):.1f} ms)"
        )

    return Section(
        scenario="lazy",
        title=(
            f"Swarm lazy: {result.nodes} nodes replay one nydus-like trace over a "
            f"{result.blob_mib:.0f} MiB blob, links capped at {result.link_mbit} Mbit/s"
        ),
        table=report(result),
        checks=[
            at_most(
                "origin piece fetches / distinct pieces",
                _fetches_per_piece(result, swarm),
                1.05,
                "{:.2f}",
            ),
            info(
                "origin GETs / distinct pieces",
                f"{swarm.origin_requests / result.distinct_pieces:.2f} "
                f"(direct {direct.origin_requests / result.distinct_pieces:.2f})",
            ),
            info("read latency p50", latency(50)),
            info("read latency p99", latency(99)),
            info(
                "slowest node's replay (slowest round)",
                f"{swarm.seconds:.1f} s (direct {direct.seconds:.1f} s)",
            ),
        ],
        plots=(
            Cdf(
                "lazy-latency",
                "Swarm lazy: read latency, every read of every node",
                "ms (log)",
                {
                    "every node to the registry": direct.latencies_ms,
                    "through dfagent": swarm.latencies_ms,
                },
            ),
            Bars(
                "lazy-latency-percentiles",
                "Swarm lazy: read latency",
                "ms",
                ("p50", "p99"),
                {
                    "every node to the registry": [
                        percentile(direct.latencies_ms, q) for q in (50, 99)
                    ],
                    "through dfagent": [percentile(swarm.latencies_ms, q) for q in (50, 99)],
                },
            ),
        ),
    )
