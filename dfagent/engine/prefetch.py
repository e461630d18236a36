"""Background completion: after a ranged read, fetch the rest of the blob quietly.

With `proxy.prefetch: true` or a request header `X-Dragonfly-Prefetch: true`, a blob that is
being read lazily is completed in the background, one run of pieces at a time, no faster than
`origin.prefetch_bandwidth`, and only while no reader is waiting on the origin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from dfagent.engine.fetcher import Engine
from dfagent.errors import DfagentError
from dfagent.origin.client import BlobSource
from dfagent.storage.store import StoredBlob
from dfagent.tasks import TaskOwner

__all__ = ["Prefetcher"]

log = logging.getLogger(__name__)

_RUN_BYTES = 4 * 1024 * 1024


class Prefetcher:
    def __init__(
        self,
        engine: Engine,
        bandwidth: int | None,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._engine = engine
        self._bandwidth = bandwidth
        self._sleep = sleep
        self._tasks = TaskOwner("prefetch")
        self._running: set[str] = set()

    async def __aenter__(self) -> Prefetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._tasks.aclose()

    def start(self, blob: StoredBlob, source: BlobSource) -> None:
        """Complete `blob` in the background, once, whoever asks how often."""
        if blob.complete or blob.digest.hex in self._running:
            return
        self._running.add(blob.digest.hex)
        self._tasks.spawn(self._complete(blob, source), name="complete")

    async def _complete(self, blob: StoredBlob, source: BlobSource) -> None:
        started = time.monotonic()
        fetched = 0
        try:
            with blob.pinned():
                # Runs small enough that pacing between them keeps close to the budget.
                run_bytes = min(_RUN_BYTES, self._bandwidth // 4) if self._bandwidth else _RUN_BYTES
                window = max(1, run_bytes // blob.piece_size)
                for first in range(0, blob.piece_count, window):
                    if blob.removed:
                        return
                    missing = [
                        i
                        for i in range(first, min(first + window, blob.piece_count))
                        if not blob.has(i)
                    ]
                    if not missing:
                        continue
                    await self._engine.until_quiet()  # readers first
                    fetched += await self._engine.fetch_missing(blob, source, missing)
                    if self._bandwidth:  # pace: never ahead of the bandwidth budget
                        ahead = fetched / self._bandwidth - (time.monotonic() - started)
                        if ahead > 0:
                            await self._sleep(ahead)
            log.info(
                "blob completed in the background",
                extra={"digest": str(blob.digest), "bytes": fetched},
            )
        except DfagentError as exc:
            log.warning(
                "background completion stopped",
                extra={"digest": str(blob.digest), "error": str(exc)},
            )
        finally:
            self._running.discard(blob.digest.hex)
