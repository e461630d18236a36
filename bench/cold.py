"""Cold path: ranges nobody has read before, through dfagent (whose cache is empty for them)
against straight to the registry. Reports time to first byte and total time per 1 MiB read,
and origin bytes per byte asked for, for each piece size compared."""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import harness
from bench.harness import percentile as _pct
from bench.report import Bars, Check, Section, at_most
from tests.support.metrics import sample_sum

MIB = 1024 * 1024


@dataclass
class Series:
    name: str
    ttfb_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    origin_bytes: float = 0.0
    asked_bytes: int = 0


class Reader:
    """One keep-alive connection, as nydusd keeps one per backend."""

    def __init__(self, port: int, target: str) -> None:
        self._connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self._target = target

    def read(self, first: int, length: int) -> tuple[float, float, bytes]:
        started = time.perf_counter()
        self._connection.request(
            "GET", self._target, headers={"Range": f"bytes={first}-{first + length - 1}"}
        )
        response = self._connection.getresponse()
        head = response.read(1)
        first_byte = time.perf_counter()
        body = head + response.read()
        done = time.perf_counter()
        assert response.status == 206, response.status
        return (first_byte - started) * 1000, (done - started) * 1000, body


def run(
    work: Path,
    samples: int = 64,
    range_length: int = MIB,
    spacing: int = 8 * MIB,
    piece_sizes: tuple[int, ...] = (MIB, 4 * MIB),
) -> list[Series]:
    harness.clean(work)
    data = os.urandom(samples * spacing)
    offsets = [i * spacing + random.randrange(0, spacing - range_length) for i in range(samples)]
    random.shuffle(offsets)
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(harness.registry(work))
        digest = registry.push_blob("bench/cold", data)
        path = f"/v2/bench/cold/blobs/{digest}"
        readers: list[tuple[Series, Reader, str | None]] = [
            (Series("registry direct"), Reader(registry.port, path), None)
        ]
        for piece_size in piece_sizes:
            process = stack.enter_context(
                harness.agent(
                    work, f"agent-{piece_size // MIB}m", storage={"piece_size": piece_size}
                )
            )
            series = Series(f"dfagent, {piece_size // MIB} MiB pieces")
            readers.append(
                (series, Reader(process.proxy_port, registry.url + path), process.metrics_url)
            )
        for turn, first in enumerate(offsets):
            rotation = readers[turn % len(readers) :] + readers[: turn % len(readers)]
            for series, reader, _ in rotation:
                ttfb, total, body = reader.read(first, range_length)
                assert body == data[first : first + range_length], f"{series.name}: bytes differ"
                series.ttfb_ms.append(ttfb)
                series.total_ms.append(total)
                series.asked_bytes += range_length
        for series, _, metrics_url in readers:
            series.origin_bytes = (
                sample_sum(metrics_url, "dfagent_origin_bytes_total")
                if metrics_url
                else float(series.asked_bytes)
            )
    return [series for series, _, _ in readers]


def report(series: list[Series]) -> str:
    base = series[0]
    lines = [
        "| path | TTFB p50 ms | TTFB p99 ms | total p50 ms | total p99 ms | "
        "TTFB p50 vs direct | total p50 vs direct | origin bytes / asked |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in series:
        lines.append(
            f"| {s.name} | {_pct(s.ttfb_ms, 50):.2f} | {_pct(s.ttfb_ms, 99):.2f} | "
            f"{_pct(s.total_ms, 50):.2f} | {_pct(s.total_ms, 99):.2f} | "
            f"{_pct(s.ttfb_ms, 50) - _pct(base.ttfb_ms, 50):+.2f} ms | "
            f"{_pct(s.total_ms, 50) / _pct(base.total_ms, 50):.2f}x | "
            f"{s.origin_bytes / s.asked_bytes:.2f} |"
        )
    return "\n".join(lines)


def section(series: list[Series]) -> Section:
    base = series[0]
    checks: list[Check] = []
    for s in series[1:]:
        checks += [
            at_most(
                f"{s.name}: TTFB p50 vs direct",
                _pct(s.ttfb_ms, 50) - _pct(base.ttfb_ms, 50),
                2.0,
                "{:+.2f} ms",
            ),
            at_most(
                f"{s.name}: total p50 vs direct",
                _pct(s.total_ms, 50) / _pct(base.total_ms, 50),
                1.1,
            ),
        ]
    groups = ("TTFB p50", "TTFB p99", "total p50", "total p99")
    return Section(
        scenario="cold",
        title=(
            f"Cold path: {len(base.total_ms)} random 1 MiB reads never made before, through "
            "dfagent against straight to the registry"
        ),
        table=report(series),
        checks=checks,
        plots=(
            Bars(
                "cold",
                "Cold path: 1 MiB reads of bytes nobody read before",
                "ms",
                groups,
                {
                    s.name: [
                        _pct(s.ttfb_ms, 50),
                        _pct(s.ttfb_ms, 99),
                        _pct(s.total_ms, 50),
                        _pct(s.total_ms, 99),
                    ]
                    for s in series
                },
            ),
        ),
    )
