"""AccessGate against a registry that refuses: a client's check raises, whatever else runs."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from yarl import URL

from dfagent.configtypes import ByteSize
from dfagent.core.digest import Digest
from dfagent.engine.access import AccessGate
from dfagent.errors import NotProven, OriginHTTPError
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource, RangeBody
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore

PIECE = 64 * 1024
HOME = "http://registry:5000"
OTHER = "http://other:5000"


class SlowRefusal:
    """A registry (in the OriginClient's place) that answers every request with 401 once
    `answer` is set: a fault, since the point is when the answer comes."""

    def __init__(self) -> None:
        self.answer = asyncio.Event()
        self.asked = 0

    async def _refuse(self) -> None:
        self.asked += 1
        await self.answer.wait()
        raise OriginHTTPError(401, {"WWW-Authenticate": 'Basic realm="r"'}, b"")

    async def blob_size(self, source: BlobSource, expected: int | None = None) -> int:
        await self._refuse()
        raise AssertionError("unreachable")

    @asynccontextmanager
    async def open_range(
        self, source: BlobSource, first: int, last: int, size: int | None = None
    ) -> AsyncIterator[RangeBody]:
        await self._refuse()
        yield  # type: ignore[misc]


async def test_a_check_a_client_waits_on_never_joins_a_background_one_that_swallows_a_refusal(
    tmp_path,
):
    """A public, verified blob read naming a registry not known to hold it starts a background
    proof, which swallows a refusal. A client whose blob is private (the blob was evicted and
    cached again privately meanwhile) asks the same registry with the same credentials while
    that proof runs: its own check must raise the refusal, not return with the proof."""
    data = os.urandom(3 * PIECE)
    digest = Digest(hashlib.sha256(data).hexdigest())
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(PIECE), scrub_interval=None)
    async with PieceStore(config, Metrics()) as store:
        public = await store.create_blob(digest, len(data), HOME, public=True)
        for index in range(3):
            piece = data[index * PIECE : (index + 1) * PIECE]
            await store.piece_finished(public, index, piece, hashlib.sha256(piece).digest())
        await asyncio.wait_for(public.checked.wait(), 10)
        assert public.verified

        registry = SlowRefusal()
        gate = AccessGate(registry, store, enabled=True, ttl=300.0)  # type: ignore[arg-type]
        source = BlobSource(URL(f"{OTHER}/v2/app/blobs/{digest}"), digest, None)
        await gate.ensure(source, public)  # public: the proof of OTHER goes on in the background
        async with asyncio.timeout(5):
            while not registry.asked:  # the background proof is under way
                await asyncio.sleep(0.01)

        public.public = False  # as a blob cached again from a private registry would be
        check = asyncio.create_task(gate.ensure(source, public))
        await asyncio.sleep(0.05)
        registry.answer.set()
        with pytest.raises((NotProven, OriginHTTPError)):
            await asyncio.wait_for(check, 5)
        await gate.aclose()
