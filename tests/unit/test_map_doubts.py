"""A doubted chunk map costs whole reads of the blob, so they are bounded: one per blob and
origin (until a while has passed), paced to the background bandwidth, none once the agent is
closing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from yarl import URL

from dfagent.core.digest import Digest
from dfagent.core.limits import Pacer
from dfagent.engine.refute import MapDoubts
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource

DATA = b"a nydus data blob, read whole" * 100
DIGEST = Digest(hashlib.sha256(DATA).hexdigest())


class WholeOrigin:
    """An origin that gives the blob whole in `parts` (slowly enough for doubts to overlap),
    counting the whole reads per registry and noting when each was read to its end."""

    def __init__(self, parts: int = 1) -> None:
        self.parts = parts
        self.reads: list[str] = []
        self.read_out: list[float] = []

    @contextlib.asynccontextmanager
    async def open_range(
        self, source: BlobSource, first: int, last: int, size: int | None = None
    ) -> AsyncIterator[Any]:
        assert (first, last, size) == (0, len(DATA) - 1, len(DATA))
        self.reads.append(source.origin)

        async def chunks() -> AsyncIterator[bytes]:
            await asyncio.sleep(0.05)
            step = -(-len(DATA) // self.parts)
            for at in range(0, len(DATA), step):
                yield DATA[at : at + step]
            self.read_out.append(time.monotonic())

        yield SimpleNamespace(chunks=chunks)


class PassingProofs:
    async def holds(self, blob: object, index: int, data: bytes) -> bool:
        return data == DATA[:100]  # the piece cut from the whole read


def doubts_with(origin: WholeOrigin, bandwidth: int | None = None) -> MapDoubts:
    pacer = Pacer(bandwidth)
    return MapDoubts(None, origin, PassingProofs(), Metrics(), pacer=pacer)  # type: ignore[arg-type]


BLOB = SimpleNamespace(
    digest=DIGEST, size=len(DATA), layout=SimpleNamespace(bounds=lambda index: (0, 100))
)


def source(registry: str) -> BlobSource:
    return BlobSource(URL(f"https://{registry}/v2/app/blobs/{DIGEST}"), DIGEST, None)


async def test_a_blob_is_read_whole_once_per_origin_however_often_it_is_doubted():
    origin = WholeOrigin()
    doubts = doubts_with(origin)
    for _ in range(3):
        doubts.doubt(BLOB, source("a.example"), 0)  # type: ignore[arg-type]
    doubts.doubt(BLOB, source("b.example"), 0)  # type: ignore[arg-type]
    await asyncio.sleep(0.3)
    assert sorted(origin.reads) == ["https://a.example:443", "https://b.example:443"]
    doubts.doubt(BLOB, source("a.example"), 0)  # type: ignore[arg-type]  # settled a while ago
    await asyncio.sleep(0.1)
    assert len(origin.reads) == 2
    await doubts.aclose()


async def test_a_closing_agent_reads_nothing_whole():
    origin = WholeOrigin()
    doubts = doubts_with(origin)
    await doubts.aclose()
    doubts.doubt(BLOB, source("a.example"), 0)  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert origin.reads == []


async def test_a_whole_read_keeps_to_the_background_bandwidth():
    origin = WholeOrigin(parts=10)
    rate = len(DATA) * 4  # bytes per second: the nine parts after the first take 0.225 s
    doubts = doubts_with(origin, bandwidth=rate)
    started = time.monotonic()
    doubts.doubt(BLOB, source("a.example"), 0)  # type: ignore[arg-type]
    async with asyncio.timeout(5):
        while not origin.read_out:
            await asyncio.sleep(0.01)
    assert origin.read_out[0] - started >= 0.05 + 0.2  # unpaced, just the origin's 0.05 s
    await doubts.aclose()
