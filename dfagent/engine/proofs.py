"""Chunk proofs: the chunk maps this agent learned from nydus bootstraps, and the check that a
piece made of chunks holds exactly what the image describes.

A map comes from a bootstrap layer whose own sha256 was checked whole (it passed through the
proxy, or a preheat fetched it). It is the word of the registries that served that layer (its
`vouchers`): bytes matching it are what those registries' image says the data blob holds, so
they may serve those registries' clients whoever delivered them.

When a bootstrap describes a data blob differently from the map already known, a verified
copy of the blob held here settles it: the map whose every chunk that copy bears out stays (or
comes in), and a bootstrap describing it otherwise vouches for nothing of that blob. With no
verified copy nothing says which is the image's own: the blob becomes *contested*, no map is
used for it, and it is read like any blob that is not nydus (its whole-blob check stays),
until a verified copy bears out the map a bootstrap gives. So whoever can push an image can
take chunk-by-chunk proofs away from a blob for a while, never its reads: a map planted first
would otherwise fail every read of the blob.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import os
from dataclasses import dataclass

from dfagent.core.digest import Digest
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
from dfagent.storage.store import BlobRemoved, PieceStore, StoredBlob
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
        if recorded in (MapRecord.CONFLICT, MapRecord.CONTESTED):
            if recorded is MapRecord.CONFLICT and known is None:  # recorded meanwhile
                known = await self._store.index.get_chunk_map(digest_hex)
            where = {"digest": f"sha256:{digest_hex}", "bootstrap": bootstrap}
            await self._settle(digest_hex, chunk_map, packed, vouchers, known=known, where=where)
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

    async def _settle(
        self,
        digest_hex: str,
        chunk_map: ChunkMap,
        packed: bytes,
        vouchers: frozenset[str],
        *,
        known: tuple[bytes, frozenset[str]] | None,
        where: dict[str, str],
    ) -> None:
        """A bootstrap describes a blob otherwise than the map `known` (None: the blob is
        contested): keep the map a verified copy here bears out, else contest the blob."""
        if known is not None:
            known_map = await asyncio.to_thread(ChunkMap.from_bytes, known[0])
            if await self._borne_out(digest_hex, known_map):
                log.warning(
                    "a bootstrap describes a data blob otherwise than the chunk map its verified"
                    " copy here bears out; its registries vouch for nothing of that blob",
                    extra=where,
                )
                return
        if await self._borne_out(digest_hex, chunk_map):
            await self._store.index.replace_chunk_map(digest_hex, packed, vouchers)
            self._metrics.chunk_maps.labels("bootstrap").inc()
            log.warning(
                "a bootstrap's chunk map, borne out by the blob's verified copy here, replaces"
                " the map the blob had, or settles a contested one",
                extra=where,
            )
            return
        if known is None:
            log.info("a bootstrap names a contested data blob; no chunk map for it", extra=where)
            return
        await self._store.index.contest_chunk_map(digest_hex)
        self._metrics.chunk_maps_contested.inc()
        log.warning(
            "two bootstraps describe a data blob differently; no chunk map is used for it"
            " (it is read like a blob that is not nydus)",
            extra=where,
        )
        await self._store.uncut(digest_hex)

    async def _borne_out(self, digest_hex: str, chunk_map: ChunkMap) -> bool:
        """Whether a verified copy of the blob is held here and every chunk of `chunk_map`
        matches its bytes (one cut along that map proved them all as they came in)."""
        blob = await self._store.open_blob(Digest.parse(f"sha256:{digest_hex}"))
        if blob is None or not blob.verified:
            return False
        try:
            with blob.pinned():
                if isinstance(blob.layout, ChunkLayout) and await asyncio.to_thread(
                    operator.eq, blob.layout.chunk_map, chunk_map
                ):
                    return True
                await asyncio.to_thread(_verify_stored, blob, chunk_map)  # a whole pass
        except ChunkMismatch:
            return False
        except (BlobRemoved, OSError) as exc:
            log.warning(
                "could not read a verified blob", extra={"digest": digest_hex, "error": str(exc)}
            )
            return False
        return True

    # proving -------------------------------------------------------------------------------

    async def prove(
        self, blob: StoredBlob, index: int, data: bytes | bytearray, source: str
    ) -> bool:
        """Whether piece `index` of `blob`, bytes `data` from `source` (origin, peer, disk),
        holds exactly the chunks the map describes. A failure is counted and logged once."""
        chunks = blob.layout.chunks(index)
        start = blob.layout.bounds(index)[0]
        try:
            await asyncio.to_thread(_verify_all, chunks, data, start)
        except ChunkMismatch as exc:
            self._metrics.chunk_verify_failures.labels(source).inc()
            log.error(
                "nydus chunk does not match the image's digest; not served",
                extra={
                    "digest": str(blob.digest),
                    "piece": index,
                    "chunk": exc.chunk_index,
                    "source": source,
                    "reason": exc.reason,
                },
            )
            return False
        for chunk in chunks:
            self._metrics.chunks_verified.labels(chunk.digest_algorithm.value).inc()
        blob.proven.add(index)
        return True


def _read_layer(blob: StoredBlob) -> dict[str, ChunkMap]:
    with open(blob.path, "rb") as file:
        return chunk_maps_of_layer(file, blob.size)


def _verify_stored(blob: StoredBlob, chunk_map: ChunkMap) -> None:
    """Every chunk of `chunk_map` against the blob's stored bytes (ChunkMismatch if one
    differs, or lies past the end)."""
    fd = blob.file.fileno()
    for chunk in chunk_map.chunks:
        verify_chunk(chunk, os.pread(fd, chunk.compressed_size, chunk.compressed_offset))


def _verify_all(chunks: tuple[Chunk, ...], data: bytes | bytearray, start: int) -> None:
    view = memoryview(data)
    for chunk in chunks:
        offset = chunk.compressed_offset - start
        verify_chunk(chunk, view[offset : offset + chunk.compressed_size])
