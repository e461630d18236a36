"""Preheat: put every blob of an image into the cache of every agent before anyone reads it.

The agent that takes the job resolves the image (tag -> index -> the platforms' manifests ->
config and layers) with the caller's credentials, completes each blob in its own cache (from
the swarm, else the origin), then asks every other member to complete it too. Those peers
read from the swarm, which by then holds every piece: the caller's credentials never leave
this agent, and each piece leaves the origin once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from yarl import URL

from dfagent.core.digest import Digest
from dfagent.engine.fetcher import Engine
from dfagent.engine.prefetch import Prefetcher
from dfagent.errors import DfagentError, IntegrityError, Throttled
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource, OriginClient
from dfagent.preheat.request import PreheatRequest
from dfagent.registry.client import ImagePlan, RegistryClient, explain
from dfagent.registry.manifests import BadManifest, Descriptor
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.swarm.client import PeerError
from dfagent.swarm.swarm import Swarm
from dfagent.tasks import TaskOwner

__all__ = ["JOBS_AT_ONCE", "JOBS_WAITING", "PreheatJob", "PreheatService", "TooManyJobs"]

log = logging.getLogger(__name__)

_KEPT_JOBS = 100  # finished jobs remembered for their status
# Jobs share the origin connections with nydusd's reads: only this many run at once, and
# at most JOBS_WAITING more wait (queued) for their turn; beyond that a job is refused.
JOBS_AT_ONCE = 2
JOBS_WAITING = 16
_POLL_SECONDS = 0.5
_PEER_MISSES = 5  # a peer that does not answer this many polls in a row has failed
_BLOBS_AT_ONCE = 2  # blobs completed here at the same time


class TooManyJobs(Throttled):
    """Every running and waiting place for preheat jobs is taken (429)."""


@dataclass
class BlobProgress:
    descriptor: Descriptor
    state: str = "pending"  # pending, fetching, cached, failed
    error: str | None = None
    peers: dict[str, str] = field(default_factory=dict)  # peer -> pending/running/done/failed: …

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": str(self.descriptor.digest),
            "size": self.descriptor.size,
            "media_type": self.descriptor.media_type,
            "state": self.state,
            "error": self.error,
            "peers": dict(self.peers),
        }


@dataclass
class PreheatJob:
    id: str
    request: PreheatRequest
    state: str = "queued"  # queued, resolving, fetching, succeeded, failed
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    manifests: list[Descriptor] = field(default_factory=list)
    blobs: list[BlobProgress] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.state in ("succeeded", "failed")

    def to_json(self) -> dict[str, Any]:
        platforms = self.request.platforms
        return {
            "id": self.id,
            "image": str(self.request.image),
            "platforms": "all" if platforms is None else [str(p) for p in platforms],
            "state": self.state,
            "error": self.error,
            "created": round(self.created, 3),
            "finished": round(self.finished, 3) if self.finished is not None else None,
            "manifests": [
                {"digest": str(m.digest), "platform": m.platform, "media_type": m.media_type}
                for m in self.manifests
            ],
            "bytes": sum(b.descriptor.size for b in self.blobs),
            "cached_bytes": sum(b.descriptor.size for b in self.blobs if b.state == "cached"),
            "blobs": [b.to_json() for b in self.blobs],
        }


class PreheatService:
    """Runs preheat jobs here, and completes blobs that other agents' jobs ask for."""

    def __init__(
        self,
        engine: Engine,
        prefetcher: Prefetcher,
        store: PieceStore,
        origin: OriginClient,
        *,
        metrics: Metrics,
        swarm: Swarm | None,
    ) -> None:
        self._engine = engine
        self._prefetcher = prefetcher
        self._store = store
        self._origin = origin
        self._metrics = metrics
        self._swarm = swarm
        self._jobs: dict[str, PreheatJob] = {}
        self._running = asyncio.Semaphore(JOBS_AT_ONCE)
        self._tasks = TaskOwner("preheat")

    async def __aenter__(self) -> PreheatService:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._tasks.aclose()

    # jobs ----------------------------------------------------------------------------------

    def submit(self, request: PreheatRequest) -> PreheatJob:
        """Start a job, or queue it behind the running ones; TooManyJobs when all places
        are taken."""
        unfinished = sum(1 for j in self._jobs.values() if not j.done)
        if unfinished >= JOBS_AT_ONCE + JOBS_WAITING:
            raise TooManyJobs(
                f"{unfinished} preheat jobs are running or queued, the most this agent takes: "
                "try again when one has finished"
            )
        job = PreheatJob(secrets.token_hex(8), request)
        self._jobs[job.id] = job
        finished = [j for j in self._jobs.values() if j.done]
        for old in finished[: max(0, len(finished) - _KEPT_JOBS)]:
            del self._jobs[old.id]
        self._tasks.spawn(self._run(job), name="preheat")
        log.info("preheat started", extra={"job": job.id, "image": str(request.image)})
        return job

    def job(self, job_id: str) -> PreheatJob | None:
        return self._jobs.get(job_id)

    def jobs(self) -> list[PreheatJob]:
        return list(self._jobs.values())

    async def _run(self, job: PreheatJob) -> None:
        try:
            async with self._running:
                job.state = "resolving"
                await self._preheat(job)
        except (DfagentError, BadManifest) as exc:
            job.state, job.error = "failed", explain(exc)
        except Exception as exc:  # a bug must still end the job, visibly
            log.exception("preheat crashed", extra={"job": job.id})
            job.state, job.error = "failed", f"internal error: {exc!r}"
        finally:
            job.finished = time.time()
            self._metrics.preheat_jobs.labels(job.state).inc()
            log.info(
                "preheat finished",
                extra={"job": job.id, "state": job.state, "error": job.error or "-"},
            )

    async def _preheat(self, job: PreheatJob) -> None:
        """Resolve the image, then complete every blob here and on every peer."""
        request = job.request
        registry = RegistryClient(
            self._origin.session,
            request.image,
            request.credentials,
            plain_http=request.plain_http,
        )
        plan = await registry.resolve(request.platforms)
        job.manifests = plan.manifests
        job.blobs = [BlobProgress(d) for d in plan.blobs]
        job.state = "fetching"
        at_once = asyncio.Semaphore(_BLOBS_AT_ONCE)
        async with asyncio.TaskGroup() as group:  # also waits for the peers' completions
            # Nydus bootstraps first: the data blobs they map are then cut along chunks.
            bootstraps = [b for b in job.blobs if b.descriptor.nydus_bootstrap]
            fetched = await asyncio.gather(
                *(self._blob(registry, plan, b, at_once, group) for b in bootstraps)
            )
            await self._engine.chunk_maps_learned([b for b in fetched if b is not None])
            for progress in job.blobs:
                if progress not in bootstraps:
                    group.create_task(self._blob(registry, plan, progress, at_once, group))
        failed = [b for b in job.blobs if b.error is not None or _peer_failed(b)]
        job.state = "failed" if failed else "succeeded"
        if failed:
            job.error = f"{len(failed)} of {len(job.blobs)} blobs did not reach every agent"

    async def _blob(
        self,
        registry: RegistryClient,
        plan: ImagePlan,
        progress: BlobProgress,
        at_once: asyncio.Semaphore,
        group: asyncio.TaskGroup,
    ) -> StoredBlob | None:
        """Complete the blob here, then have every peer complete it (in `group`); the blob's
        handle, None when it failed here."""
        descriptor = progress.descriptor
        url = plan.blob_url(descriptor.digest)
        async with at_once:
            progress.state = "fetching"
            try:
                blob = await self._complete_here(url, registry, descriptor)
            except DfagentError as exc:
                progress.state, progress.error = "failed", explain(exc)
                return None
            progress.state = "cached"
        if self._swarm is not None:
            for peer in self._swarm.others():
                progress.peers[peer] = "pending"
                group.create_task(self._spread(progress, peer, str(url)))
        return blob

    async def _complete_here(
        self, url: URL, registry: RegistryClient, descriptor: Descriptor
    ) -> StoredBlob:
        authorization = await registry.blob_authorization()
        source = BlobSource(url, descriptor.digest, authorization)
        blob = await self._engine.blob(source)
        if blob.size != descriptor.size:
            raise IntegrityError(
                f"the registry has {blob.size} bytes, the manifest says {descriptor.size}"
            )
        await self._prefetcher.complete(blob, source, paced=False)
        return blob

    async def _spread(self, progress: BlobProgress, peer: str, url: str) -> None:
        """Have `peer` complete the blob, and follow it until it has."""
        assert self._swarm is not None
        digest = str(progress.descriptor.digest)
        misses = 0
        try:
            state, error = await self._swarm.complete_at(
                peer, digest, progress.descriptor.size, url
            )
            while state in ("running", "idle"):
                progress.peers[peer] = "running"
                await asyncio.sleep(_POLL_SECONDS)
                try:
                    state, error = await self._swarm.completion_at(peer, digest)
                    misses = 0
                except PeerError:
                    misses += 1
                    if misses >= _PEER_MISSES:
                        raise
        except (PeerError, KeyError) as exc:
            state, error = "failed", str(exc)
        progress.peers[peer] = "done" if state == "done" else f"failed: {error}"

    # completions other agents ask for --------------------------------------------------------

    async def start(self, digest: Digest, size: int, url: URL) -> tuple[str, str | None]:
        source = BlobSource(url, digest)
        try:
            blob = await self._engine.blob(source, for_client=False)
        except DfagentError as exc:
            return "failed", str(exc)
        if blob.size != size:
            return "failed", f"this agent knows {digest} as {blob.size} bytes, not {size}"
        self._prefetcher.start(blob, source, paced=False)
        return self._prefetcher.state(blob)

    async def state(self, digest: Digest) -> tuple[str, str | None]:
        blob = await self._store.open_blob(digest)
        if blob is None:
            return "idle", None
        return self._prefetcher.state(blob)


def _peer_failed(progress: BlobProgress) -> bool:
    return any(state.startswith("failed") for state in progress.peers.values())
