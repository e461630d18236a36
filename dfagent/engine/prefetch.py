"""Completion: fetch every missing piece of a blob, one run of pieces at a time.

In the background after a ranged read (`proxy.prefetch: true` or a request header
`X-Dragonfly-Prefetch: true`): paced to `origin.prefetch_bandwidth`, and only while no reader
is waiting on the origin. For a preheat, as fast as the sources allow, still yielding to
readers. A peer asks for completions too (a preheat spreading through the swarm); it learns
how one went from `state`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

from dfagent.core.limits import Pacer
from dfagent.engine.fetcher import Engine
from dfagent.errors import DfagentError
from dfagent.origin.client import BlobSource
from dfagent.storage.store import StoredBlob
from dfagent.tasks import TaskOwner

__all__ = ["Prefetcher"]

log = logging.getLogger(__name__)

_RUN_BYTES = 4 * 1024 * 1024
_REMEMBERED_FAILURES = 1024


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
        self._failures: dict[str, str] = {}  # digest hex -> why its last completion stopped

    async def __aenter__(self) -> Prefetcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._tasks.aclose()

    def start(self, blob: StoredBlob, source: BlobSource, *, paced: bool = True) -> None:
        """Complete `blob` in the background, once, whoever asks how often."""
        if blob.complete or blob.digest.hex in self._running:
            return
        self._running.add(blob.digest.hex)
        self._failures.pop(blob.digest.hex, None)
        self._tasks.spawn(self._background(blob, source, paced), name="complete")

    def state(self, blob: StoredBlob) -> tuple[str, str | None]:
        """("done" | "running" | "failed" | "idle", why it failed)."""
        if blob.complete:
            return "done", None
        if blob.digest.hex in self._running:
            return "running", None
        failure = self._failures.get(blob.digest.hex)
        return ("failed", failure) if failure is not None else ("idle", None)

    async def _background(self, blob: StoredBlob, source: BlobSource, paced: bool) -> None:
        try:
            fetched = await self.complete(blob, source, paced=paced)
            log.info(
                "blob completed in the background",
                extra={"digest": str(blob.digest), "bytes": fetched},
            )
        except DfagentError as exc:
            log.warning(
                "background completion stopped",
                extra={"digest": str(blob.digest), "error": str(exc)},
            )
            self._failures[blob.digest.hex] = str(exc)
            while len(self._failures) > _REMEMBERED_FAILURES:
                del self._failures[next(iter(self._failures))]
        finally:
            self._running.discard(blob.digest.hex)

    async def complete(self, blob: StoredBlob, source: BlobSource, *, paced: bool) -> int:
        """Fetch every piece `blob` lacks; the bytes fetched. Raises DfagentError when a
        source fails (pieces stored until then stay)."""
        bandwidth = self._bandwidth if paced else None
        pacer = Pacer(bandwidth, sleep=self._sleep)
        fetched = 0
        with blob.pinned():
            # Runs small enough that pacing between them keeps close to the budget.
            run_bytes = min(_RUN_BYTES, bandwidth // 4) if bandwidth else _RUN_BYTES
            for first, stop in _runs(blob, run_bytes):
                if blob.removed:
                    break
                missing = [i for i in range(first, stop) if not blob.has(i)]
                if not missing:
                    continue
                await self._engine.until_quiet()  # readers first
                run = await self._engine.fetch_missing(blob, source, missing)
                fetched += run
                await pacer.take(run)
        if blob.removed:
            raise DfagentError(f"{blob.digest} was dropped (evicted, or failed its digest check)")
        return fetched


def _runs(blob: StoredBlob, run_bytes: int) -> Iterator[tuple[int, int]]:
    """The blob's pieces in runs `[first, stop)` of about `run_bytes` (at least one piece)."""
    layout = blob.layout
    first = 0
    while first < layout.count:
        stop = layout.index_of(min(layout.bounds(first)[0] + run_bytes, blob.size) - 1) + 1
        yield first, max(stop, first + 1)
        first = max(stop, first + 1)
