"""Chunk proofs: the chunk maps this agent learned from nydus bootstraps, and the check that a
piece made of chunks holds exactly what the image describes.

A map comes from a bootstrap layer whose own sha256 was checked whole (it passed through the
proxy, or a preheat fetched it). It is the word of the registries that served that layer (its
`vouchers`): bytes matching it are what those registries' image says the data blob holds, so
they may serve those registries' clients whoever delivered them.

A map never changes once known. A bootstrap that describes a data blob otherwise vouches for
nothing of that blob when the two maps agree wherever both list a chunk (images built on one
another map the same blob with different files), or when a copy cut along the known map was
verified whole here. Otherwise they contradict each other and nothing says which is the
image's own: the blob becomes *contested*, no map is used for it, a copy cut along the old one
is forgotten, and it is read like a blob that is not nydus (its whole-blob check stays). So
whoever can push an image can take chunk-by-chunk proofs away from a blob, not its reads. A
map that lies alone is caught by the blob itself (dfagent.engine.refute).
"""

from __future__ import annotations

import asyncio
import logging
import operator
from dataclasses import dataclass

from dfagent.metrics import Metrics
from dfagent.nydus import (
    Chunk,
    ChunkMap,
    ChunkMismatch,
    NydusFormatError,
    chunk_maps_of_layer,
    verify_chunk,
)
from dfagent.storage.index import MapRecord
from dfagent.storage.layout import ChunkLayout
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.tasks import TaskOwner

__all__ = ["ChunkProofs", "KnownMap"]

log = logging.getLogger(__name__)

# Maps kept for blobs this node does not hold (yet): beyond this many the oldest go.
_MAPS_KEPT = 4096


@dataclass(frozen=True, slots=True)
class KnownMap:
    chunk_map: ChunkMap
    vouchers: frozenset[str]  # registries whose image metadata gave this map


class ChunkProofs:
    def __init__(self, store: PieceStore, metrics: Metrics) -> None:
        self._store = store
        self._metrics = metrics
        self._tasks = TaskOwner("chunk-proofs")
        self._learning: set[asyncio.Task[None]] = set()

    async def aclose(self) -> None:
        await self._tasks.aclose()

    async def known(self, digest_hex: str) -> KnownMap | None:
        """The chunk map of a data blob, if a bootstrap naming it was seen."""
        row = await self._store.index.get_chunk_map(digest_hex)
        if row is None:
            return None
        try:  # a map may hold a million chunks: seconds of work, kept off the event loop
            return KnownMap(await asyncio.to_thread(ChunkMap.from_bytes, row[0]), row[1])
        except NydusFormatError as exc:
            log.warning(
                "stored chunk map unreadable", extra={"digest": digest_hex, "error": str(exc)}
            )
            return None

    # learning ------------------------------------------------------------------------------

    def trusted(self, blob: StoredBlob) -> None:
        """A blob was verified whole, or a registry proved it holds a verified blob: if it is a
        nydus bootstrap layer, learn the maps of the data blobs it names (in the background)."""
        learning = self._tasks.spawn(self._learn(blob), name="learn-chunk-maps")
        self._learning.add(learning)
        learning.add_done_callback(self._learning.discard)

    async def settled(self) -> None:
        """Return once every blob trusted so far was looked at for chunk maps."""
        if self._learning:
            await asyncio.wait(list(self._learning))

    async def _learn(self, blob: StoredBlob) -> None:
        try:
            with blob.pinned():
                maps = await asyncio.to_thread(_read_layer, blob)
        except NydusFormatError as exc:
            log.warning(
                "bootstrap layer unreadable; no chunk maps from it",
                extra={"digest": str(blob.digest), "error": str(exc)},
            )
            return
        except OSError as exc:
            log.warning(
                "could not read a verified blob",
                extra={"digest": str(blob.digest), "error": str(exc)},
            )
            return
        vouchers = frozenset(blob.origins)
        for digest_hex, chunk_map in maps.items():
            await self._record(digest_hex, chunk_map, vouchers, bootstrap=str(blob.digest))
        if maps:
            await self._store.index.prune_chunk_maps(_MAPS_KEPT)

    async def _record(
        self, digest_hex: str, chunk_map: ChunkMap, vouchers: frozenset[str], *, bootstrap: str
    ) -> None:
        packed = await asyncio.to_thread(chunk_map.to_bytes)
        known = await self._store.index.get_chunk_map(digest_hex)
        recorded = await self._store.index.put_chunk_map(digest_hex, packed, vouchers)
        where = {"digest": f"sha256:{digest_hex}", "bootstrap": bootstrap}
        if recorded is MapRecord.CONTESTED:
            log.info("a bootstrap names a contested data blob; no chunk map for it", extra=where)
            return
        if recorded is MapRecord.CONFLICT:
            await self._conflict(digest_hex, chunk_map, where)
            return
        if recorded is MapRecord.NEW:
            self._metrics.chunk_maps.labels("bootstrap").inc()
            await self._store.recut(digest_hex)
        self._metrics.chunk_map_vouchers.inc(len(vouchers - (known[1] if known else set())))
        blob = self._store.loaded(digest_hex)
        if (
            blob is not None
            and isinstance(blob.layout, ChunkLayout)
            and await asyncio.to_thread(operator.eq, blob.layout.chunk_map, chunk_map)
        ):
            blob.vouchers |= vouchers

    async def _conflict(self, digest_hex: str, chunk_map: ChunkMap, where: dict[str, str]) -> None:
        """A bootstrap describes a blob otherwise than the map recorded for it."""
        recorded = await self._store.index.get_chunk_map(digest_hex)
        if recorded is None:  # contested meanwhile
            return
        try:
            agree = await asyncio.to_thread(
                lambda: ChunkMap.from_bytes(recorded[0]).agrees_with(chunk_map)
            )
        except NydusFormatError:
            agree = False
        if agree or not await self._store.contest_chunk_map(digest_hex):
            log.info(
                "a bootstrap describes a data blob otherwise than its known chunk map; its"
                " registries vouch for nothing of that blob",
                extra=where,
            )
            return
        self._metrics.chunk_maps_contested.inc()
        log.warning(
            "two bootstraps contradict each other on a data blob's chunks; no chunk map is used"
            " for it (it is read like a blob that is not nydus)",
            extra=where,
        )

    # proving -------------------------------------------------------------------------------

    async def holds(self, blob: StoredBlob, index: int, data: bytes | bytearray) -> bool:
        """Whether `data` holds exactly the chunks the map describes for piece `index` (no
        count, no log: see prove)."""
        return await self._mismatch(blob, index, data) is None

    async def prove(
        self, blob: StoredBlob, index: int, data: bytes | bytearray, source: str
    ) -> bool:
        """Whether piece `index` of `blob`, bytes `data` from `source` (origin, peer, disk),
        holds exactly the chunks the map describes. A failure is counted and logged once."""
        mismatch = await self._mismatch(blob, index, data)
        if mismatch is not None:
            self._metrics.chunk_verify_failures.labels(source).inc()
            log.error(
                "nydus chunk does not match the image's digest; not served",
                extra={
                    "digest": str(blob.digest),
                    "piece": index,
                    "chunk": mismatch.chunk_index,
                    "source": source,
                    "reason": mismatch.reason,
                },
            )
            return False
        for chunk in blob.layout.chunks(index):
            self._metrics.chunks_verified.labels(chunk.digest_algorithm.value).inc()
        blob.proven.add(index)
        return True

    @staticmethod
    async def _mismatch(
        blob: StoredBlob, index: int, data: bytes | bytearray
    ) -> ChunkMismatch | None:
        chunks = blob.layout.chunks(index)
        try:
            await asyncio.to_thread(_verify_all, chunks, data, blob.layout.bounds(index)[0])
        except ChunkMismatch as exc:
            return exc
        return None


def _read_layer(blob: StoredBlob) -> dict[str, ChunkMap]:
    with open(blob.path, "rb") as file:
        return chunk_maps_of_layer(file, blob.size)


def _verify_all(chunks: tuple[Chunk, ...], data: bytes | bytearray, start: int) -> None:
    view = memoryview(data)
    for chunk in chunks:
        offset = chunk.compressed_offset - start
        verify_chunk(chunk, view[offset : offset + chunk.compressed_size])
