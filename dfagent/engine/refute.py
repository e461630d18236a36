"""Doubting a chunk map: bytes from a blob's origin failed a chunk proof. Either the origin lies
or the map does (a bootstrap anyone who can push an image may publish can describe someone
else's blob). The blob itself settles it: read whole from that origin and hashed, the bytes are
the blob only if they match its digest. If they do, and the piece's chunks still fail against
the map, the map is wrong: the blob is contested (read without a map, see ChunkProofs) instead
of failing every read of those chunks. If they do not, the origin lies and the proof stands.

Nothing read here is stored or served: the whole read only hashes, and keeps the one piece it
re-checks. It is bounded, so that neither a lying map nor a lying origin can make this agent
read blobs over and over, or crowd out its readers: one whole read per blob and origin per
_RECHECK_SECONDS, at most _READS_AT_ONCE at a time and _WAITING waiting, within the
budget of origin reads nobody waits for (`origin.prefetch_bandwidth`, shared with background
completions), each within a deadline, none of a blob over _MAX_DOUBTED_BYTES.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import operator
import time

from dfagent.core.limits import Pacer
from dfagent.engine.proofs import ChunkProofs
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource, OriginClient
from dfagent.storage.layout import ChunkLayout
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.tasks import TaskOwner

__all__ = ["MapDoubts"]

log = logging.getLogger(__name__)

_RECHECK_SECONDS = 600.0  # a blob read whole from an origin is not read whole again before this
_RETRY_SECONDS = 60.0  # nor, after a whole read that failed, before this
_DOUBTS_KEPT = 1024  # (blob, origin) pairs remembered; beyond this the oldest are forgotten
_READS_AT_ONCE = 2  # whole reads running together
_WAITING = 16  # doubts waiting for a turn; more are dropped (the next failing read doubts again)
_MAX_DOUBTED_BYTES = 16 << 30  # a larger blob is not read whole for this
# A whole read slower than this on average is given up (or than a fair share of the paced
# rate, when that is lower).
_MIN_BYTES_PER_SECOND = 1 << 20
_DEADLINE_SLACK = 60.0
_HASH_BATCH = 1024 * 1024  # bytes hashed at a time, off the event loop

_Key = tuple[str, str]  # (digest hex, origin)


class MapDoubts:
    def __init__(
        self,
        store: PieceStore,
        origin: OriginClient,
        proofs: ChunkProofs,
        metrics: Metrics,
        *,
        pacer: Pacer,
    ) -> None:
        """`pacer`: the budget of origin reads nobody waits for, shared with completions."""
        self._store = store
        self._pacer = pacer
        fair_share = pacer.rate / (2 * _READS_AT_ONCE) if pacer.rate else math.inf
        self._least_rate = min(_MIN_BYTES_PER_SECOND, fair_share)
        self._origin = origin
        self._proofs = proofs
        self._metrics = metrics
        self._settled: dict[_Key, float] = {}  # -> until when it is not read whole again
        self._pending: set[_Key] = set()
        self._reading = asyncio.Semaphore(_READS_AT_ONCE)
        self._closed = False
        self._tasks = TaskOwner("map-doubts")

    async def aclose(self) -> None:
        self._closed = True
        await self._tasks.aclose()

    def doubt(self, blob: StoredBlob, source: BlobSource, index: int) -> None:
        """Piece `index` of `blob`, as `source`'s origin sent it, failed its chunk proof."""
        key = (blob.digest.hex, source.origin)
        if (
            self._closed
            or key in self._pending
            or len(self._pending) >= _READS_AT_ONCE + _WAITING
            or blob.size > _MAX_DOUBTED_BYTES
            or time.monotonic() < self._settled.get(key, 0.0)
        ):
            return
        self._pending.add(key)
        self._tasks.spawn(self._doubt(key, blob, source, index), name="doubt-chunk-map")

    async def _doubt(self, key: _Key, blob: StoredBlob, source: BlobSource, index: int) -> None:
        retry_after = _RETRY_SECONDS
        try:
            if await self._settle(blob, source, index):
                retry_after = _RECHECK_SECONDS
        finally:
            self._pending.discard(key)
            self._settled[key] = time.monotonic() + retry_after
            if len(self._settled) > _DOUBTS_KEPT:
                del self._settled[min(self._settled, key=self._settled.__getitem__)]

    async def _settle(self, blob: StoredBlob, source: BlobSource, index: int) -> bool:
        """Read the blob whole and judge the map; False when the whole read failed."""
        where = {"digest": str(blob.digest), "piece": index, "origin": source.origin}
        try:
            async with self._reading:
                deadline = _DEADLINE_SLACK + blob.size / self._least_rate
                async with asyncio.timeout(deadline):
                    whole, piece = await self._read_whole(blob, source, index)
            if whole != blob.digest.hex:
                log.warning(
                    "the origin's bytes are not the blob; its chunk proof stands", extra=where
                )
                return True
            if await self._proofs.holds(blob, index, piece):
                log.info("the origin's bytes pass their chunk proof now", extra=where)
                return True
            known = await self._proofs.known(blob.digest.hex)
            if (
                known is None
                or not isinstance(blob.layout, ChunkLayout)
                or not await asyncio.to_thread(operator.eq, blob.layout.chunk_map, known.chunk_map)
            ):
                return True  # contested, or another map learned meanwhile: not the one doubted
            if await self._store.contest_chunk_map(blob.digest.hex, refuted=True):
                self._metrics.chunk_maps_contested.inc()
                log.warning(
                    "the blob, read whole and proven by its digest, contradicts its chunk map;"
                    " no chunk map is used for it (it is read like a blob that is not nydus)",
                    extra=where,
                )
            return True
        except TimeoutError:
            log.info("a doubted blob's whole read took too long", extra=where)
        except Exception as exc:  # a background check: logged, never raised to anyone
            log.warning(
                "could not read a doubted blob whole",
                extra={**where, "error": str(exc) or type(exc).__name__},
            )
        return False

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
                await self._pacer.take(len(data))
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
