"""Cache hits: random ranges from a blob dfagent holds, against nginx serving the same bytes.

Both sides serve from the page cache on loopback, driven by the same wrk run shape, one after
the other in the same run; the figure that matters is the ratio.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import random
from dataclasses import dataclass
from pathlib import Path

from bench import harness, resources
from bench.report import Bars, Check, Section, at_least, at_most

MIB = 1024 * 1024
DEFAULT_LOOP = "asyncio"  # the agent's default; the targets are checked against it


@dataclass(frozen=True)
class Row:
    server: str
    range_length: int
    connections: int
    result: harness.WrkResult


@dataclass(frozen=True)
class CacheHit:
    rows: list[Row]
    resources: list[resources.Resources]  # one per agent, over the wrk runs


def _check_ranges(port: int, target: str, data: bytes, length: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(20):
        first = random.randrange(0, len(data) - length)
        connection.request("GET", target, headers={"Range": f"bytes={first}-{first + length - 1}"})
        response = connection.getresponse()
        body = response.read()
        assert response.status == 206, (response.status, body[:200])
        assert body == data[first : first + length], "bytes differ from the source"
    connection.close()


def _warm(port: int, target: str, data: bytes) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.request("GET", target)
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200 and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    connection.close()


def run(
    work: Path,
    size: int = 256 * MIB,
    seconds: float = 10,
    range_lengths: tuple[int, ...] = (MIB, 128 * 1024),
    connections: tuple[int, ...] = (1, 16, 64),
    loops: tuple[str, ...] = ("asyncio", "uvloop"),
) -> CacheHit:
    harness.clean(work)
    data = os.urandom(size)
    files = work / "files"
    files.mkdir()
    (files / "blob").write_bytes(data)
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        nginx_port = stack.enter_context(harness.nginx(work, files))
        digest = registry.push_blob("bench/hit", data)
        target = f"{registry.url}/v2/bench/hit/blobs/{digest}"
        agents = {
            loop: stack.enter_context(harness.agent(work, f"agent-{loop}", "--loop", loop))
            for loop in loops
        }
        for process in agents.values():
            _warm(process.proxy_port, target, data)
        meters = {
            loop: resources.Meter(f"cache hit, dfagent ({loop})", [resources.watched(process)])
            for loop, process in agents.items()
        }
        for length in range_lengths:
            _check_ranges(nginx_port, "/blob", data, length)
            for process in agents.values():
                _check_ranges(process.proxy_port, target, data, length)
            for conns in connections:
                rows.append(
                    Row("nginx", length, conns,
                        harness.wrk(nginx_port, "/blob", size, length, conns, seconds))
                )  # fmt: skip
                for loop, process in agents.items():
                    rows.append(
                        Row(f"dfagent ({loop})", length, conns,
                            harness.wrk(process.proxy_port, target, size, length, conns, seconds))
                    )  # fmt: skip
        usage = [meter.read() for meter in meters.values()]
    return CacheHit(rows, usage)


def report(rows: list[Row]) -> str:
    lines = [
        "| range | conns | server | req/s | p50 ms | p99 ms | vs nginx req/s | vs nginx p99 | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        limit = _limit(rows, row)
        lines.append(
            f"| {row.range_length // 1024} KiB | {row.connections} | {row.server} | "
            f"{row.result.requests_per_second:,.0f} | {row.result.p50_ms:.2f} | {row.result.p99_ms:.2f} | "
            f"{row.result.requests_per_second / limit.requests_per_second:.2f}x | "
            f"{row.result.p99_ms / limit.p99_ms:.2f}x | {row.result.errors} |"
        )
    return "\n".join(lines)


def _limit(rows: list[Row], row: Row) -> harness.WrkResult:
    """nginx's result for the same range length and connection count."""
    return next(
        r.result for r in rows
        if r.server == "nginx" and r.range_length == row.range_length and r.connections == row.connections
    )  # fmt: skip


def _cell(row: Row) -> str:
    return f"{row.range_length // 1024} KiB x{row.connections}"


def section(result: CacheHit) -> Section:
    checks: list[Check] = []
    for row in result.rows:
        if row.server == f"dfagent ({DEFAULT_LOOP})":
            limit = _limit(result.rows, row)
            checks += [
                at_least(
                    f"{_cell(row)}: req/s vs nginx",
                    row.result.requests_per_second / limit.requests_per_second,
                    0.8,
                ),
                at_most(f"{_cell(row)}: p99 vs nginx", row.result.p99_ms / limit.p99_ms, 2.0),
            ]
    cells = list(dict.fromkeys(_cell(r) for r in result.rows))
    servers = list(dict.fromkeys(r.server for r in result.rows))
    by = {(r.server, _cell(r)): r for r in result.rows}
    throughput = {
        s: [by[s, c].result.requests_per_second * by[s, c].range_length / MIB for c in cells]
        for s in servers
    }
    p99 = {s: [by[s, c].result.p99_ms for c in cells] for s in servers}

    return Section(
        scenario="cache-hit",
        title="Cache hit: random ranges, dfagent against nginx",
        table=report(result.rows),
        checks=checks,
        plots=(
            Bars(
                "cache-hit-throughput",
                "Cache hit throughput (range x connections)",
                "MiB/s",
                cells,
                throughput,
            ),
            Bars(
                "cache-hit-p99",
                "Cache hit p99 latency (range x connections)",
                "ms (log)",
                cells,
                p99,
                log=True,
            ),
        ),
    )
