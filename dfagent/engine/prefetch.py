"""Completion: fetch every missing piece of a blob, one run of pieces at a time.

In the background after a ranged read (`proxy.prefetch: true` or a request header
`X-Dragonfly-Prefetch: true`): within `origin.prefetch_bandwidth` (the engine's budget of
origin reads nobody waits for, shared by every completion), and only while no reader is
waiting on the origin. For a preheat, as fast as the sources allow, still yielding to
readers. A peer asks for completions too (a preheat spreading through the swarm); it learns
how one went from `state`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

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
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
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
        pacer = self._engine.background_pacer if paced else Pacer(None)
        fetched = 0
        with blob.pinned():
            # Runs small enough that pacing between them keeps close to the budget.
            run_bytes = min(_RUN_BYTES, pacer.rate // 4) if pacer.rate else _RUN_BYTES
            for first, stop in _runs(blob, run_bytes):
                if blob.removed:
                    break
                missing = [i for i in range(first, stop) if not blob.has(i)]
                if not missing:
                    continue
                spans = map(blob.layout.bounds, missing)
                await pacer.take(sum(end - start for start, end in spans))  # before, not after
                await self._engine.until_quiet()  # readers first
                fetched += await self._engine.fetch_missing(blob, source, missing)
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
