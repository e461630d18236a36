"""A doubted chunk map costs whole reads of the blob, so they are bounded: one per blob and
origin (until a while has passed), none once the agent is closing."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from yarl import URL

from dfagent.core.digest import Digest
from dfagent.engine.refute import MapDoubts
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource

DATA = b"a nydus data blob, read whole" * 100
DIGEST = Digest(hashlib.sha256(DATA).hexdigest())


class WholeOrigin:
    """An origin that gives the blob whole (slowly enough for doubts to overlap), counting
    the whole reads per registry."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    @contextlib.asynccontextmanager
    async def open_range(
        self, source: BlobSource, first: int, last: int, size: int | None = None
    ) -> AsyncIterator[Any]:
        assert (first, last, size) == (0, len(DATA) - 1, len(DATA))
        self.reads.append(source.origin)

        async def chunks() -> AsyncIterator[bytes]:
            await asyncio.sleep(0.05)
            yield DATA

        yield SimpleNamespace(chunks=chunks)


class PassingProofs:
    async def holds(self, blob: object, index: int, data: bytes) -> bool:
        return data == DATA[:100]  # the piece cut from the whole read


def doubts_with(origin: WholeOrigin) -> MapDoubts:
    return MapDoubts(None, origin, PassingProofs(), Metrics())  # type: ignore[arg-type]


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
