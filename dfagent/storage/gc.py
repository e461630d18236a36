"""Eviction: keep the cache under its own byte budget and drop blobs nobody reads any more.

Each pass is independent and logs its own failure; the loop carries on. Only dfagent's own
bytes count (summed in the index), never the filesystem's usage: another program filling the
disk must not empty our cache. Blobs that someone is reading or writing (pinned) are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from dfagent.metrics import Metrics
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore

__all__ = ["GarbageCollector", "GcReport"]

log = logging.getLogger(__name__)

_BATCH = 256


@dataclass(frozen=True, slots=True)
class GcReport:
    evicted_for_age: int
    evicted_for_quota: int
    freed_bytes: int
    stored_bytes: int


class GarbageCollector:
    def __init__(self, store: PieceStore, config: StorageConfig, metrics: Metrics) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """Run the passes every gc_interval, and at once when the high watermark is passed."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.gc_interval):
                    await self._store.over_high_water.wait()
            self._store.over_high_water.clear()
            try:
                await self.collect()
            except Exception:
                log.exception("eviction pass failed; trying again next interval")

    async def collect(self) -> GcReport:
        """Run every pass now: age, then quota."""
        async with self._lock:
            before = self._store.stored_bytes
            await self._store.flush_access_times()
            aged = await self._evict_old()
            over = await self._evict_to_low_watermark()
            report = GcReport(
                aged, over, before - self._store.stored_bytes, self._store.stored_bytes
            )
        if aged or over:
            log.info(
                "evicted",
                extra={
                    "age": aged,
                    "quota": over,
                    "freed": report.freed_bytes,
                    "stored": report.stored_bytes,
                },
            )
        return report

    async def _evict_old(self) -> int:
        if self._config.max_age is None:
            return 0
        cutoff = time.time() - self._config.max_age
        evicted = 0
        skipped: set[str] = set()
        while True:
            batch = await self._store.index.accessed_before(cutoff, len(skipped) + _BATCH)
            digests = [d for d in batch if d not in skipped]
            if not digests:
                return evicted
            for digest in digests:
                if await self._evict(digest, "age"):
                    evicted += 1
                else:
                    skipped.add(digest)

    async def _evict_to_low_watermark(self) -> int:
        high = self._store.quota * self._config.high_watermark
        low = self._store.quota * self._config.low_watermark
        if self._store.stored_bytes <= high:
            return 0
        evicted = 0
        skipped: set[str] = set()
        while self._store.stored_bytes > low:
            candidates = [
                digest
                for digest, _ in await self._store.index.least_recent(len(skipped) + _BATCH)
                if digest not in skipped
            ]
            if not candidates:
                log.warning(
                    "cache over its quota, but every blob left is in use",
                    extra={"stored": self._store.stored_bytes, "quota": self._store.quota},
                )
                break
            for digest in candidates:
                if await self._evict(digest, "quota"):
                    evicted += 1
                    if self._store.stored_bytes <= low:
                        break
                else:
                    skipped.add(digest)
        return evicted

    async def _evict(self, digest: str, reason: str) -> bool:
        before = self._store.stored_bytes
        if not await self._store.evict(digest):
            return False
        self._metrics.evicted_blobs.labels(reason).inc()
        self._metrics.evicted_bytes.inc(max(0, before - self._store.stored_bytes))
        log.debug("evicted blob", extra={"digest": f"sha256:{digest}", "reason": reason})
        return True
