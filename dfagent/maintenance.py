"""Operator actions on the cache: status (with the agent's preheat jobs), eviction now,
verification now.

The same code serves the running agent (through its control socket) and the CLI when no agent
runs (it then opens the data directory itself, taking its lock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from dfagent.nydus import ChunkMap, NydusFormatError
from dfagent.storage.gc import GarbageCollector
from dfagent.storage.index import BlobSummary
from dfagent.storage.layout import ChunkLayout
from dfagent.storage.scrub import Scrubber
from dfagent.storage.store import PieceStore

__all__ = ["Maintenance"]

_TOP = 10


class Maintenance:
    def __init__(
        self,
        store: PieceStore,
        gc: GarbageCollector,
        scrubber: Scrubber,
        *,
        running: Callable[[], dict[str, Any]] | None = None,
        preheat_jobs: Callable[[], list[dict[str, Any]]] = list,
    ) -> None:
        self._running = running  # the running agent's pid and addresses; None offline
        self._preheat_jobs = preheat_jobs
        self._store = store
        self._gc = gc
        self._scrubber = scrubber

    async def status(self) -> dict[str, Any]:
        await self._store.flush_access_times()
        blobs = await self._store.index.blobs()
        verified = [b for b in blobs if b.verified]

        async def entry(blob: BlobSummary) -> dict[str, Any]:
            return {
                "digest": f"sha256:{blob.digest}",
                "size": blob.size,
                "stored": blob.stored,
                "pieces": blob.pieces,
                "verified": blob.verified,
                "last_access": round(blob.last_access, 3),
                **await self._chunks(blob),
            }

        return {
            "agent": self._running() if self._running is not None else None,
            "dir": str(self._store.root),
            "quota": self._store.quota,
            "stored": self._store.stored_bytes,
            "usage": round(self._store.stored_bytes / self._store.quota, 4),
            "pieces": self._store.stored_pieces,
            "blobs": len(blobs),
            "verified_blobs": len(verified),
            "partial_blobs": len(blobs) - len(verified),
            "largest": [await entry(b) for b in sorted(blobs, key=lambda b: -b.stored)[:_TOP]],
            "recent": [await entry(b) for b in sorted(blobs, key=lambda b: -b.last_access)[:_TOP]],
            "preheat": [
                {k: job[k] for k in ("id", "image", "state", "bytes", "cached_bytes", "error")}
                for job in self._preheat_jobs()[-_TOP:]
            ],
            "time": round(time.time(), 3),
        }

    async def _chunks(self, blob: BlobSummary) -> dict[str, Any]:
        """Whether the blob is cut along nydus chunks; if so its chunk count, and how many
        of them this agent proved against their digests since it started."""
        if not blob.chunk_mapped:
            return {"chunk_mapped": False}
        loaded = self._store.loaded(blob.digest)
        proven = 0
        if loaded is not None and isinstance(loaded.layout, ChunkLayout):
            count = len(loaded.layout.chunk_map.chunks)
            proven = sum(len(loaded.layout.chunks(index)) for index in loaded.proven)
        else:
            known = await self._store.index.get_chunk_map(blob.digest)
            count = await asyncio.to_thread(_chunk_count, known[0]) if known is not None else 0
        return {"chunk_mapped": True, "chunks": count, "chunks_verified": proven}

    async def agent(self) -> dict[str, Any]:
        """The running agent's pid and addresses (no cache walk: `dfagent get` asks often)."""
        return {"agent": self._running() if self._running is not None else None}

    async def gc(self) -> dict[str, Any]:
        report = await self._gc.collect()
        return {
            "evicted_for_age": report.evicted_for_age,
            "evicted_for_quota": report.evicted_for_quota,
            "freed": report.freed_bytes,
            "stored": report.stored_bytes,
        }

    async def verify(self, *, repair: bool) -> dict[str, Any]:
        report = await self._scrubber.scrub(rate=None, repair=repair)
        return {
            "pieces": report.pieces,
            "bytes": report.bytes,
            "seconds": round(report.seconds, 3),
            "mb_per_second": round(report.bytes / 1e6 / report.seconds, 1)
            if report.seconds
            else None,
            "bad": [{"digest": f"sha256:{d}", "piece": i} for d, i in report.bad],
            "repaired": report.repaired,
        }


def _chunk_count(packed: bytes) -> int:
    """Chunks in a stored map (0 for one this version refuses: it cuts no blob)."""
    try:
        return len(ChunkMap.from_bytes(packed).chunks)
    except NydusFormatError:
        return 0
