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

from bench import harness

MIB = 1024 * 1024


@dataclass(frozen=True)
class Row:
    server: str
    range_length: int
    connections: int
    result: harness.WrkResult


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
) -> list[Row]:
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
    return rows


def report(rows: list[Row]) -> str:
    lines = [
        "| range | conns | server | req/s | p50 ms | p99 ms | vs nginx req/s | vs nginx p99 | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        limit = next(
            r.result for r in rows
            if r.server == "nginx" and r.range_length == row.range_length and r.connections == row.connections
        )  # fmt: skip
        lines.append(
            f"| {row.range_length // 1024} KiB | {row.connections} | {row.server} | "
            f"{row.result.requests_per_second:,.0f} | {row.result.p50_ms:.2f} | {row.result.p99_ms:.2f} | "
            f"{row.result.requests_per_second / limit.requests_per_second:.2f}x | "
            f"{row.result.p99_ms / limit.p99_ms:.2f}x | {row.result.errors} |"
        )
    return "\n".join(lines)
