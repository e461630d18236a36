"""The scrub: re-hash stored pieces against the sha256 recorded when they were stored.

A bit flipped on disk, a truncated or overwritten data file: the piece no longer matches and is
dropped (with `repair`), so it is fetched again instead of being served. The walk goes in key
order through the index in small batches, so it never holds the index for long, and reads at
most `rate` bytes per second so it stays out of the way of clients.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from dfagent.core.digest import Digest
from dfagent.core.limits import Pacer
from dfagent.integrity import sha256_of_file
from dfagent.metrics import Metrics
from dfagent.storage.config import StorageConfig
from dfagent.storage.index import PieceRow
from dfagent.storage.store import PieceStore

__all__ = ["ScrubReport", "Scrubber"]

log = logging.getLogger(__name__)

_BATCH = 256


@dataclass(slots=True)
class ScrubReport:
    pieces: int = 0
    bytes: int = 0
    seconds: float = 0.0
    bad: list[tuple[str, int]] = field(default_factory=list)  # (digest hex, piece index)
    repaired: bool = False


class Scrubber:
    def __init__(
        self,
        store: PieceStore,
        config: StorageConfig,
        metrics: Metrics,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._config = config
        self._metrics = metrics
        self._sleep = sleep
        self._lock = asyncio.Lock()

    async def run(self) -> None:
        """A slow pass every scrub_interval, repairing what it finds."""
        interval = self._config.scrub_interval
        if interval is None:
            return
        while True:
            await self._sleep(interval)
            try:
                report = await self.scrub(rate=self._config.scrub_rate, repair=True)
            except Exception:
                log.exception("scrub pass failed; trying again next interval")
                continue
            log.info(
                "scrub pass done",
                extra={"pieces": report.pieces, "bytes": report.bytes, "bad": len(report.bad)},
            )

    async def scrub(self, *, rate: int | None, repair: bool) -> ScrubReport:
        """Check every stored piece; drop bad ones when `repair`. `rate` caps bytes per second."""
        async with self._lock:
            report = ScrubReport(repaired=repair)
            started = time.monotonic()
            pacer = Pacer(rate, sleep=self._sleep)  # the walk never ahead of `rate`
            after = ("", -1)
            while rows := await self._store.index.pieces_after(*after, _BATCH):
                after = (rows[-1].digest, rows[-1].index)
                for row in rows:
                    await pacer.take(row.length)
                    if not await self._check(row):
                        report.bad.append((row.digest, row.index))
                        self._metrics.scrub_bad_pieces.inc()
                        log.error(
                            "stored piece does not match its recorded sha256",
                            extra={"digest": f"sha256:{row.digest}", "piece": row.index},
                        )
                        if repair:
                            await self._store.drop_piece(row.digest, row.index, row.length)
                    report.pieces += 1
                    report.bytes += row.length
                    self._metrics.scrubbed_pieces.inc()
                    self._metrics.scrubbed_bytes.inc(row.length)
            report.seconds = time.monotonic() - started
            self._metrics.scrub_passes.inc()
            return report

    async def _check(self, row: PieceRow) -> bool:
        blob = await self._store.open_blob(Digest.parse(f"sha256:{row.digest}"))
        if blob is None:  # gone since the rows were read
            return True
        offset = blob.layout.bounds(row.index)[0]
        return await asyncio.to_thread(
            _piece_matches, str(self._store.blob_path(row.digest)), offset, row.length, row.sha256
        )


def _piece_matches(path: str, offset: int, length: int, sha256: bytes) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return sha256_of_file(fd, offset, length) == sha256
    finally:
        os.close(fd)
