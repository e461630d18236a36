"""Doubting a chunk map: bytes from a blob's origin failed a chunk proof. Either the origin lies
or the map does (a bootstrap anyone who can push an image may publish can describe someone
else's blob). The blob itself settles it: read whole from that origin and hashed, the bytes are
the blob only if they match its digest. If they do, and the piece's chunks still fail against
the map, the map is wrong: the blob is contested (read without a map, see ChunkProofs) instead
of failing every read of those chunks. If they do not, the origin lies and the proof stands.

Nothing read here is stored or served: the whole read only hashes, and keeps the one piece it
re-checks. It runs in the background, once per blob per _RECHECK_SECONDS and _READS_AT_ONCE
blobs at a time, so neither a lying map nor a lying origin can make this agent read blobs over
and over.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time

from dfagent.engine.proofs import ChunkProofs
from dfagent.errors import DfagentError
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource, OriginClient
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.tasks import TaskOwner

__all__ = ["MapDoubts"]

log = logging.getLogger(__name__)

_RECHECK_SECONDS = 600.0  # a blob whose map was doubted is not read whole again before this
_DOUBTS_KEPT = 1024  # blobs remembered as doubted; beyond this the oldest are forgotten
_HASH_BATCH = 1024 * 1024  # bytes hashed at a time, off the event loop
_READS_AT_ONCE = 2  # whole reads running together; the others wait their turn


class MapDoubts:
    def __init__(
        self, store: PieceStore, origin: OriginClient, proofs: ChunkProofs, metrics: Metrics
    ) -> None:
        self._store = store
        self._origin = origin
        self._proofs = proofs
        self._metrics = metrics
        self._doubted: dict[str, float] = {}  # digest hex -> when its map was last doubted
        self._reading = asyncio.Semaphore(_READS_AT_ONCE)
        self._tasks = TaskOwner("map-doubts")

    async def aclose(self) -> None:
        await self._tasks.aclose()

    def doubt(self, blob: StoredBlob, source: BlobSource, index: int) -> None:
        """Piece `index` of `blob`, as `source`'s origin sent it, failed its chunk proof."""
        now = time.monotonic()
        digest = blob.digest.hex
        if now - self._doubted.get(digest, -_RECHECK_SECONDS) < _RECHECK_SECONDS:
            return
        self._doubted[digest] = now
        if len(self._doubted) > _DOUBTS_KEPT:
            del self._doubted[min(self._doubted, key=self._doubted.__getitem__)]
        self._tasks.spawn(self._settle(blob, source, index), name="doubt-chunk-map")

    async def _settle(self, blob: StoredBlob, source: BlobSource, index: int) -> None:
        where = {"digest": str(blob.digest), "piece": index}
        try:
            async with self._reading:
                whole, piece = await self._read_whole(blob, source, index)
        except (DfagentError, OSError) as exc:
            log.info("could not read a doubted blob whole", extra={**where, "error": str(exc)})
            return
        if whole != blob.digest.hex:
            log.warning("the origin's bytes are not the blob; its chunk proof stands", extra=where)
            return
        if await self._proofs.holds(blob, index, piece):
            log.info("the origin's bytes pass their chunk proof now", extra=where)
            return
        if await self._store.contest_chunk_map(blob.digest.hex, refuted=True):
            self._metrics.chunk_maps_contested.inc()
            log.warning(
                "the blob, read whole and proven by its digest, contradicts its chunk map; no"
                " chunk map is used for it (it is read like a blob that is not nydus)",
                extra=where,
            )

    async def _read_whole(
        self, blob: StoredBlob, source: BlobSource, index: int
    ) -> tuple[str, bytes]:
        """The sha256 (hex) of the blob as the origin gives it whole, and the bytes of piece
        `index` in that read."""
        start, end = blob.layout.bounds(index)
        hasher = hashlib.sha256()
        piece = bytearray()
        batch = bytearray()
        position = 0
        async with self._origin.open_range(source, 0, blob.size - 1, blob.size) as body:
            async for data in body.chunks():
                low, high = max(start, position), min(end, position + len(data))
                if low < high:
                    piece += data[low - position : high - position]
                position += len(data)
                batch += data
                if len(batch) >= _HASH_BATCH:
                    await asyncio.to_thread(hasher.update, bytes(batch))
                    batch.clear()
        await asyncio.to_thread(hasher.update, bytes(batch))
        return hasher.hexdigest(), bytes(piece)
