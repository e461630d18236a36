"""Dragonfly side by side: dfagent against Dragonfly's own dfdaemon on one machine, in the same
network namespaces behind the same capped links (bench.cluster), in one run. Three systems take
turns on the nodes, one at a time:

- dfdaemon: Dragonfly's dfdaemon on every node, each node reading through its proxy, and a real
  scheduler on a host of its own;
- dfagent: dfagent on every node in its builtin swarm (what `bench swarm` runs);
- dfagent, Dragonfly mode: dfagent on every node as a member of a Dragonfly cluster, with the
  same scheduler program, placed the same way (started afresh, as for dfdaemon).

Each system reads blobs of its own that nobody has read, so none inherits another's caches or
the scheduler's knowledge; the offsets read are the same for all. Figures per system:

- fill: every node reads one whole blob at once: the last one's time / (S/B), origin bytes / S;
- lazy: bench.lazy's trace replayed on every node at once: read latency p50 and p99;
- cache hit: random ranges of the fill blob (whole on node 0 by then) through node 0's proxy,
  against nginx serving the same bytes in the same namespace, with wrk;
- cold: 1 MiB ranges of blobs nobody read: time to first byte of a blob's first read, and of a
  later read of its bytes not read before.

Origin bytes are each system's own count and, measured the same way for all, what the origin's
link sent (headers included). Lazy and cold also run straight to the registry, for reference.
Needs root (ip netns, tc).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import cluster, harness, lazy, swarm
from bench.harness import WrkResult, percentile
from bench.report import Bars, Check, Section, at_least, at_most, table
from bench.resources import cpu_seconds
from dfagent.dragonfly.pieces import piece_length
from tests.support import dragonfly
from tests.support.metrics import sample_sum

MIB = 1024 * 1024
COLD_RANGE = MIB
_READER = Path(__file__).with_name("trace_reader.py")
_DFDAEMON_TRAFFIC = "dragonfly_client_download_traffic"  # bytes, by type
_CHECKED_RANGES = 10  # ranges compared with the source before each cache-hit cell's wrk runs

DFDAEMON, DFAGENT, DRAGONFLY_MODE = "dfdaemon", "dfagent", "dfagent, Dragonfly mode"
SYSTEMS = (DFDAEMON, DFAGENT, DRAGONFLY_MODE)
DIRECT = "registry direct"
_SLUGS = {
    DFDAEMON: "dfdaemon",
    DFAGENT: "dfagent",
    DRAGONFLY_MODE: "dfagent-dragonfly",
    DIRECT: "direct",
}


@dataclass(frozen=True)
class Sizes:
    nodes: int = 4
    link_mbit: int = 200
    fill: int = 256 * MIB
    lazy: int = 256 * MIB
    coverage: float = 0.15  # share of the lazy blob the trace reads
    readers: int = 4  # lazy readers per node
    wrk_seconds: float = 10
    cells: tuple[tuple[int, int], ...] = ((MIB, 16), (128 * 1024, 16))  # range, connections
    cold_blobs: int = 16
    cold_size: int = 16 * MIB

    @property
    def bound_s(self) -> float:
        """S / B: the time one node's link needs for the fill blob."""
        return self.fill / (self.link_mbit * 1e6 / 8)


# What is read: (first byte, length) ranges.
Ranges = list[tuple[int, int]]


@dataclass(frozen=True)
class Plan:
    """The offsets every system reads: each node's lazy trace in its own order, and each cold
    blob's two ranges (the first in its first half, the later one in its second half)."""

    lazy_orders: list[Ranges]
    cold_ranges: list[Ranges]


def _plan(sizes: Sizes, rng: random.Random) -> Plan:
    trace = [(r.first, r.length) for r in lazy.make_trace(sizes.lazy, sizes.coverage, rng)]
    orders = []
    for _ in range(sizes.nodes):
        order = trace.copy()
        rng.shuffle(order)
        orders.append(order)
    half = sizes.cold_size // 2
    cold = [
        [
            (rng.randrange(0, half - COLD_RANGE + 1), COLD_RANGE),
            (rng.randrange(half, sizes.cold_size - COLD_RANGE + 1), COLD_RANGE),
        ]
        for _ in range(sizes.cold_blobs)
    ]
    return Plan(orders, cold)


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    url: str  # at the registry, as a proxy is asked for it
    path: str  # on the registry, as the registry itself is asked for it


@dataclass(frozen=True)
class Trace:
    """Ranges of one blob, with each one's sha256, in a file trace_reader.py reads."""

    blob: Blob
    file: Path


@dataclass(frozen=True)
class Blobs:
    """One system's blobs, none read by anyone before it."""

    fill: Blob | None  # None for the registry read directly (no fill measured)
    fill_file: Path | None  # the fill blob's bytes, which nginx serves
    lazy: list[Trace]  # one per node, same blob
    cold: list[Trace]  # one per cold blob


def _trace(file: Path, blob: Blob, data: bytes, ranges: Ranges) -> Trace:
    entries = [[f, n, hashlib.sha256(data[f : f + n]).hexdigest()] for f, n in ranges]
    file.write_text(json.dumps(entries))
    return Trace(blob, file)


def _prepare(net: cluster.Network, work: Path, sizes: Sizes, plan: Plan, *, fill: bool) -> Blobs:
    """Push this system's blobs (random bytes, so none is another's) and write its traces."""
    work.mkdir(parents=True)
    repo = f"bench/{work.name}"

    def push(data: bytes) -> Blob:
        digest = net.registry.push_blob(repo, data)
        path = f"/v2/{repo}/blobs/{digest}"
        return Blob(digest, len(data), net.registry.url + path, path)

    fill_blob = fill_file = None
    if fill:
        data = os.urandom(sizes.fill)
        fill_blob = push(data)
        fill_file = work / "fill.blob"
        fill_file.write_bytes(data)
    data = os.urandom(sizes.lazy)
    blob = push(data)
    traces = [
        _trace(work / f"lazy-{i}.json", blob, data, order)
        for i, order in enumerate(plan.lazy_orders)
    ]
    cold = []
    for i, ranges in enumerate(plan.cold_ranges):
        data = os.urandom(sizes.cold_size)
        cold.append(_trace(work / f"cold-{i}.json", push(data), data, ranges))
    return Blobs(fill_blob, fill_file, traces, cold)


# the systems ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Door:
    """Where one node's reads go: a server reached from inside the node's namespace."""

    host: cluster.Host
    address: str
    port: int


@dataclass(frozen=True)
class System:
    name: str
    doors: list[Door]  # one per node, in node order
    origin_bytes: Callable[[], float]  # blob bytes its nodes say they had from the origin
    uploaded_bytes: Callable[[], list[float]]  # what each node says it sent to other nodes
    pids: list[int]  # its programs on the nodes
    proxy: bool = True  # reads name a blob by its URL (a proxy), else by its path (the registry)

    def target(self, blob: Blob) -> str:
        return blob.url if self.proxy else blob.path


def _place(host: cluster.Host) -> dragonfly.Place:
    return dragonfly.Place(host.address, tuple(host.prefix))


def _agents_system(name: str, nodes: list[cluster.Node], uploads: str) -> System:
    """dfagent on every node; `uploads` is the metric of the bytes it sends its peers."""

    def origin() -> float:
        return sum(sample_sum(n.metrics_url, "dfagent_origin_bytes_total") for n in nodes)

    def uploaded() -> list[float]:
        return [sample_sum(n.metrics_url, uploads) for n in nodes]

    doors = [Door(n.host, cluster.PROXY_ADDRESS, cluster.PROXY_PORT) for n in nodes]
    pids = [n.agent.process.pid for n in nodes if n.agent.process is not None]
    return System(name, doors, origin, uploaded, pids)


@contextlib.contextmanager
def _dfdaemons(work: Path, hosts: list[cluster.Host], at: cluster.Host) -> Iterator[System]:
    with dragonfly.cluster(
        work,
        daemons=len(hosts),
        log_level="warn",
        scheduler_at=_place(at),
        daemons_at=[_place(h) for h in hosts],
    ) as running:

        def origin() -> float:
            return sum(d.metric(_DFDAEMON_TRAFFIC, type="BACK_TO_SOURCE") for d in running.daemons)

        def uploaded() -> list[float]:
            return [d.metric("dragonfly_client_upload_traffic") for d in running.daemons]

        doors = [Door(h, d.ip, d.proxy_port) for h, d in zip(hosts, running.daemons, strict=True)]
        yield System(DFDAEMON, doors, origin, uploaded, [d.pid for d in running.daemons])


@contextlib.contextmanager
def _dfagents(work: Path, hosts: list[cluster.Host], at: cluster.Host) -> Iterator[System]:
    work.mkdir(parents=True)
    with cluster.agents(work, hosts) as nodes:
        yield _agents_system(DFAGENT, nodes, "dfagent_uploaded_bytes_total")


@contextlib.contextmanager
def _dragonfly_mode(work: Path, hosts: list[cluster.Host], at: cluster.Host) -> Iterator[System]:
    with (
        dragonfly.cluster(work, daemons=0, log_level="warn", scheduler_at=_place(at)) as running,
        cluster.dragonfly_agents(work, hosts, running.scheduler_address) as nodes,
    ):
        yield _agents_system(DRAGONFLY_MODE, nodes, "dfagent_dragonfly_upload_bytes_total")


_STARTS = {DFDAEMON: _dfdaemons, DFAGENT: _dfagents, DRAGONFLY_MODE: _dragonfly_mode}


# the measurements ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fill:
    seconds: list[float]  # per node
    origin_bytes: float  # the system's own count
    link_bytes: float  # what the origin's link sent
    uploaded: list[float]  # what each node sent to the others, by the system's own count
    cpu_seconds: float  # of the system's programs on the nodes


@dataclass(frozen=True)
class Replay:
    latencies_ms: list[float]
    first_byte_ms: list[float]  # in the same order
    seconds: float  # until the slowest node was done
    origin_bytes: float
    link_bytes: float


@dataclass(frozen=True)
class Hit:
    range_length: int
    connections: int
    proxy: WrkResult
    nginx: WrkResult


@dataclass(frozen=True)
class Measured:
    fill: Fill | None
    hits: list[Hit]
    lazy: Replay
    cold: list[Replay]  # one per cold blob: its first read, then its later one


class _Origin:
    """Origin bytes since it was made: the system's own count and the origin link's."""

    def __init__(self, system: System, origin: cluster.Host) -> None:
        self._system, self._origin = system, origin
        self._counted, self._sent = system.origin_bytes(), cluster.sent_bytes(origin)

    def since(self) -> tuple[float, float]:
        counted = self._system.origin_bytes() - self._counted
        return counted, cluster.sent_bytes(self._origin) - self._sent


def _fill(system: System, blob: Blob, origin: cluster.Host) -> Fill:
    before, uploaded = _Origin(system, origin), system.uploaded_bytes()
    cpu = sum(map(cpu_seconds, system.pids))
    seconds = swarm.read_all_at_once(
        [(d.host, d.address, d.port, system.target(blob)) for d in system.doors], blob.digest
    )
    cpu = sum(map(cpu_seconds, system.pids)) - cpu
    uploaded = [after - was for after, was in zip(system.uploaded_bytes(), uploaded, strict=True)]
    return Fill(seconds, *before.since(), uploaded, cpu)


def _reader(door: Door, target: str, trace: Trace, readers: int) -> tuple[cluster.Host, list[str]]:
    """trace_reader.py replaying `trace` against `door`, from inside the door's node."""
    command = [sys.executable, str(_READER), door.address, str(door.port), target]
    return door.host, [*command, str(trace.file), str(readers)]


def _replay(
    system: System, runs: list[tuple[Door, Trace]], readers: int, origin: cluster.Host
) -> Replay:
    """Every (door, trace) replayed at once."""
    before = _Origin(system, origin)
    outputs = cluster.run_at_once(
        [_reader(door, system.target(trace.blob), trace, readers) for door, trace in runs]
    )
    results = [json.loads(out) for out in outputs]
    return Replay(
        [ms for r in results for ms in r["latencies_ms"]],
        [ms for r in results for ms in r["first_byte_ms"]],
        max(r["seconds"] for r in results),
        *before.since(),
    )


def _cache_hit(
    system: System, blob: Blob, file: Path, work: Path, sizes: Sizes, rng: random.Random
) -> list[Hit]:
    """Node 0's proxy against nginx in node 0's namespace, serving the same bytes; both are
    first checked against the source."""
    proxy, host = system.doors[0], system.doors[0].host
    data = file.read_bytes()
    hits = []
    with harness.nginx(work, file.parent, host.address, host.prefix) as port:
        nginx = Door(host, host.address, port)
        by_proxy, by_nginx = (proxy, system.target(blob)), (nginx, f"/{file.name}")
        for length, connections in sizes.cells:
            ranges = [
                (rng.randrange(0, blob.size - length + 1), length) for _ in range(_CHECKED_RANGES)
            ]
            trace = _trace(work / f"check-{length}.json", blob, data, ranges)
            cluster.run_at_once([_reader(*by_proxy, trace, 1), _reader(*by_nginx, trace, 1)])
            shape = (blob.size, length, connections, sizes.wrk_seconds)
            limit = _wrk(*by_nginx, *shape)
            hits.append(Hit(length, connections, _wrk(*by_proxy, *shape), limit))
    return hits


def _wrk(
    door: Door, target: str, size: int, length: int, connections: int, seconds: float
) -> WrkResult:
    """wrk from inside the door's node."""
    return harness.wrk(
        door.port, target, size, length, connections, seconds, door.address, door.host.prefix
    )


def _cold(system: System, traces: list[Trace], origin: cluster.Host) -> list[Replay]:
    """Each cold blob read by one node (in turn), its two ranges one after the other."""
    doors = system.doors
    return [
        _replay(system, [(doors[i % len(doors)], trace)], 1, origin)
        for i, trace in enumerate(traces)
    ]


def _measure(
    system: System,
    blobs: Blobs,
    work: Path,
    origin: cluster.Host,
    sizes: Sizes,
    rng: random.Random,
) -> Measured:
    """Fill, lazy, cold, and the cache hits last (on the fill blob, whole on node 0 by then):
    wrk may drain a proxy's request budget, which would then refuse the next reads."""
    fill = None
    if blobs.fill is not None:
        fill = _fill(system, blobs.fill, origin)
    lazy = _replay(system, list(zip(system.doors, blobs.lazy, strict=True)), sizes.readers, origin)
    cold = _cold(system, blobs.cold, origin)
    hits = []
    if blobs.fill is not None and blobs.fill_file is not None:
        hits = _cache_hit(system, blobs.fill, blobs.fill_file, work, sizes, rng)
    return Measured(fill, hits, lazy, cold)


@dataclass(frozen=True)
class SideBySide:
    sizes: Sizes
    lazy_reads: int  # per node
    lazy_mib: float  # what one node reads
    measured: dict[str, Measured]  # by system, and DIRECT (lazy and cold only)


def run(work: Path, sizes: Sizes, seed: int = 6) -> SideBySide:
    harness.clean(work)
    rng = random.Random(seed)
    plan = _plan(sizes, rng)
    measured: dict[str, Measured] = {}
    with cluster.network(work, sizes.nodes + 1, sizes.link_mbit) as net:
        *hosts, scheduler_host = net.hosts  # the scheduler has a host of its own
        cluster.uncap(net.origin)  # pushing the blobs is set-up: at full speed
        try:
            blobs = {
                name: _prepare(net, work / "blobs" / _SLUGS[name], sizes, plan, fill=name != DIRECT)
                for name in (DIRECT, *SYSTEMS)
            }
        finally:
            cluster.cap(net.origin, sizes.link_mbit)
        direct = System(
            DIRECT,
            [Door(h, net.origin.address, cluster.REGISTRY_PORT) for h in hosts],
            lambda: math.nan,
            list,
            [],
            proxy=False,
        )
        measured[DIRECT] = _measure(direct, blobs[DIRECT], work, net.origin, sizes, rng)
        for name in SYSTEMS:
            system_work = work / _SLUGS[name]
            with _STARTS[name](system_work, hosts, scheduler_host) as system:
                measured[name] = _measure(system, blobs[name], system_work, net.origin, sizes, rng)
    order = plan.lazy_orders[0]
    return SideBySide(sizes, len(order), sum(n for _, n in order) / MIB, measured)


# the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    name: str
    lower_is_better: bool
    values: dict[str, float]  # by system; DIRECT too where measured
    fmt: str = "{:.2f}"
    ratio_fmt: str = "{:.2f}x"  # finer for byte counts, where 1.00x hides a difference


def _ratio(value: float, base: float) -> float:
    return value / base if base else math.inf


def _firsts(replays: list[Replay], which: int) -> list[float]:
    return [r.first_byte_ms[which] for r in replays]


def figures(result: SideBySide) -> list[Figure]:
    sizes, m = result.sizes, result.measured
    fill = {name: f for name in SYSTEMS if (f := m[name].fill) is not None}
    everyone = (*SYSTEMS, DIRECT)
    out = [
        Figure("fill time / (S/B)", True,
               {n: max(f.seconds) / sizes.bound_s for n, f in fill.items()}),
        Figure("fill: origin bytes / S (own count)", True,
               {n: f.origin_bytes / sizes.fill for n, f in fill.items()}, "{:.3f}", "{:.3f}x"),
        Figure("fill: origin link bytes sent / S", True,
               {n: f.link_bytes / sizes.fill for n, f in fill.items()}, "{:.3f}", "{:.3f}x"),
        Figure("lazy: read p50 ms", True,
               {n: percentile(m[n].lazy.latencies_ms, 50) for n in everyone}, "{:.1f}"),
        Figure("lazy: read p99 ms", True,
               {n: percentile(m[n].lazy.latencies_ms, 99) for n in everyone}, "{:.1f}"),
        Figure("lazy: origin link MiB sent", True,
               {n: m[n].lazy.link_bytes / MIB for n in everyone}, "{:.0f}"),
    ]  # fmt: skip
    for i, (length, connections) in enumerate(sizes.cells):
        cell = {
            n: _ratio(m[n].hits[i].proxy.ok_per_second, m[n].hits[i].nginx.ok_per_second)
            for n in SYSTEMS
            if m[n].hits
        }
        out.append(
            Figure(f"cache hit {length // 1024} KiB x{connections}: req/s vs nginx", False, cell)
        )
    out += [
        Figure("cold: TTFB p50 ms, a blob's first read", True,
               {n: percentile(_firsts(m[n].cold, 0), 50) for n in everyone}, "{:.1f}"),
        Figure("cold: TTFB p50 ms, a later read", True,
               {n: percentile(_firsts(m[n].cold, 1), 50) for n in everyone}, "{:.1f}"),
    ]  # fmt: skip
    return out


def _cell(figure: Figure, name: str) -> str:
    value = figure.values.get(name)
    return "-" if value is None else figure.fmt.format(value)


def main_table(result: SideBySide) -> str:
    header = [
        "figure", "better", DFDAEMON, DFAGENT, DRAGONFLY_MODE,
        f"{DFAGENT} / {DFDAEMON}", f"{DRAGONFLY_MODE} / {DFDAEMON}", DIRECT,
    ]  # fmt: skip
    rows = []
    for f in figures(result):
        base = f.values[DFDAEMON]
        ratios = [f.ratio_fmt.format(_ratio(f.values[n], base)) for n in (DFAGENT, DRAGONFLY_MODE)]
        better = "lower" if f.lower_is_better else "higher"
        rows.append([f.name, better, *(_cell(f, n) for n in SYSTEMS), *ratios, _cell(f, DIRECT)])
    return table(header, rows)


def _mib(value: float) -> str:
    return "-" if math.isnan(value) else f"{value / MIB:,.0f}"


def _fill_table(result: SideBySide) -> str:
    sizes = result.sizes
    header = ["system", "last node s", "first node s", "/ (S/B)"]
    header += ["origin MiB (own count)", "origin link MiB sent", "uploaded MiB (own count)"]
    header += ["busiest uploader's share", "node CPU s"]
    rows = []
    for name in SYSTEMS:
        f = result.measured[name].fill
        if f is not None:
            last, first = max(f.seconds), min(f.seconds)
            share = max(f.uploaded) / max(sum(f.uploaded), 1)
            rows.append([
                name, f"{last:.2f}", f"{first:.2f}", f"{last / sizes.bound_s:.2f}",
                _mib(f.origin_bytes), _mib(f.link_bytes), _mib(sum(f.uploaded)), f"{share:.0%}",
                f"{f.cpu_seconds:.1f}",
            ])  # fmt: skip
    return (
        f"Fill: every node reads one {sizes.fill // MIB} MiB blob at once through its proxy; "
        f"S/B = {sizes.bound_s:.1f} s. Dragonfly cuts it into "
        f"{piece_length(sizes.fill) // MIB} MiB pieces.\n\n" + table(header, rows)
    )


def _lazy_table(result: SideBySide) -> str:
    sizes = result.sizes
    header = ["system", "read p50 ms", "read p99 ms", "slowest node s"]
    header += ["origin MiB (own count)", "origin link MiB sent"]
    rows = []
    for name in (*SYSTEMS, DIRECT):
        r = result.measured[name].lazy
        rows.append([
            name, f"{percentile(r.latencies_ms, 50):.1f}", f"{percentile(r.latencies_ms, 99):.1f}",
            f"{r.seconds:.2f}", _mib(r.origin_bytes), _mib(r.link_bytes),
        ])  # fmt: skip
    return (
        f"Lazy: every node reads {result.lazy_reads} ranges ({result.lazy_mib:.0f} MiB, "
        f"{result.lazy_mib * MIB / sizes.lazy:.0%} of a {sizes.lazy // MIB} MiB blob) in its "
        f"own order with {sizes.readers} readers, all nodes at once.\n\n" + table(header, rows)
    )


def _hit_table(result: SideBySide) -> str:
    header = ["cell", "server", "206/s", "MiB/s", "p50 ms", "p99 ms", "vs nginx 206/s", "errors"]
    rows = []
    for name in SYSTEMS:
        for hit in result.measured[name].hits:
            cell = f"{hit.range_length // 1024} KiB x{hit.connections}"
            for server, r in ((f"nginx (beside {name})", hit.nginx), (name, hit.proxy)):
                rate = r.ok_per_second
                rows.append([
                    cell, server, f"{rate:,.0f}", f"{rate * hit.range_length / MIB:,.0f}",
                    f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
                    f"{_ratio(rate, hit.nginx.ok_per_second):.2f}x", f"{r.errors:,}",
                ])  # fmt: skip
    return (
        f"Cache hit: wrk on node 0 ({result.sizes.wrk_seconds:.0f} s per row), random ranges "
        "of the fill blob, which node 0 holds whole by then; nginx serves the same bytes from "
        "a file in the same namespace, measured just before each proxy. Only 206 answers "
        "count (errors: other answers, such as refusals, and socket errors).\n\n"
        + table(header, rows)
    )


def _cold_table(result: SideBySide) -> str:
    sizes = result.sizes
    header = ["system", "first read TTFB p50 ms", "max", "later read TTFB p50 ms", "max"]
    header += ["first read total p50 ms", "origin link MiB sent"]
    rows = []
    for name in (*SYSTEMS, DIRECT):
        cold = result.measured[name].cold
        firsts, laters = _firsts(cold, 0), _firsts(cold, 1)
        totals = [r.latencies_ms[0] for r in cold]
        rows.append([
            name, f"{percentile(firsts, 50):.1f}", f"{max(firsts):.1f}",
            f"{percentile(laters, 50):.1f}", f"{max(laters):.1f}",
            f"{percentile(totals, 50):.1f}", _mib(sum(r.link_bytes for r in cold)),
        ])  # fmt: skip
    return (
        f"Cold: {sizes.cold_blobs} blobs of {sizes.cold_size // MIB} MiB nobody read, each "
        f"read by one node (in turn): a {COLD_RANGE // MIB} MiB range in its first half (the "
        "blob's first read), then one in its second half (a later read).\n\n" + table(header, rows)
    )


def _checks(result: SideBySide) -> list[Check]:
    checks = []
    for f in figures(result):
        base = f.values[DFDAEMON]
        for name in (DFAGENT, DRAGONFLY_MODE):
            ratio = _ratio(f.values[name], base)
            label = f"{f.name}: {name} / dfdaemon"
            bound = at_most if f.lower_is_better else at_least
            checks.append(bound(label, ratio, 1.0, f.ratio_fmt))
    return checks


def _plots(result: SideBySide) -> tuple[Bars, ...]:
    by_name = {f.name: f for f in figures(result)}

    def series(names: tuple[str, ...], keys: list[str]) -> dict[str, list[float]]:
        return {n: [by_name[k].values.get(n, math.nan) for k in keys] for n in names}

    hit_keys = [name for name in by_name if name.startswith("cache hit")]
    cells = [k.removeprefix("cache hit ").removesuffix(": req/s vs nginx") for k in hit_keys]
    fills = {n: [max(f.seconds)] for n in SYSTEMS if (f := result.measured[n].fill) is not None}
    lazy = ["lazy: read p50 ms", "lazy: read p99 ms"]
    cold = ["cold: TTFB p50 ms, a blob's first read", "cold: TTFB p50 ms, a later read"]
    everyone = (*SYSTEMS, DIRECT)
    return (
        Bars("dragonfly-fill", "Fill: time until every node has the blob", "seconds",
             ("fill time",), {"bound S/B": [result.sizes.bound_s], **fills}),
        Bars("dragonfly-lazy", "Lazy trace: read latency", "ms", ("p50", "p99"),
             series(everyone, lazy)),
        Bars("dragonfly-cache-hit", "Cache hit: requests per second vs nginx", "x nginx", cells,
             series(SYSTEMS, hit_keys)),
        Bars("dragonfly-cold", "Cold 1 MiB ranges: time to first byte (p50)", "ms",
             ("a blob's first read", "a later read"), series(everyone, cold)),
    )  # fmt: skip


_READING = (
    "Each ratio is a dfagent figure over dfdaemon's, both measured in this run: below 1 is "
    "ahead where lower is better, above 1 where higher is better. The scheduler (the same "
    "program and configuration for both Dragonfly systems, started afresh for each) runs in a "
    "namespace of its own behind a link capped like the nodes'; dfdaemon runs with the "
    "configuration of tests/support/dragonfly.py and its own defaults otherwise, among them "
    "its proxy's budget of 4000 requests a second (a refused request counts as an error, not "
    "as served). dfagent in Dragonfly mode serves a parent's bytes of a blob with no nydus "
    "chunk map only once the whole blob matched its digest (a whole read waits for the whole "
    "blob), and sends lazy ranged reads of such a blob to the origin: its lazy and cold figures "
    "are those of going to the origin through dfagent's pieces, not of peer-to-peer reads."
)


def section(result: SideBySide) -> Section:
    sizes = result.sizes
    tables = [main_table(result), _READING, _fill_table(result), _lazy_table(result)]
    tables += [_hit_table(result), _cold_table(result)]
    return Section(
        scenario="dragonfly",
        title=(
            f"Dragonfly side by side: {sizes.nodes} nodes in network namespaces, links capped at "
            f"{sizes.link_mbit} Mbit/s both ways; dfdaemon, dfagent and dfagent in Dragonfly "
            "mode in turn"
        ),
        table="\n\n".join(tables),
        checks=_checks(result),
        plots=_plots(result),
    )
