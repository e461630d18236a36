"""This agent as a member of a Dragonfly cluster: the engine's peer network in Dragonfly mode.

Per blob, one peer task at the scheduler (task id: the blob's digest, as dfdaemon names a
registry blob): the scheduler answers with parents (dfdaemons or other members) or sends this
agent to the origin. Parents say which Dragonfly pieces they have (SyncPieces) and send them
over Vortex; every Dragonfly piece whole here is reported, so the scheduler can send children.

Nothing is trusted for being Dragonfly's. A piece's crc32 only catches damage in transit. A
parent's bytes serve a client only once this agent's own proofs say so: a piece made of nydus
chunks when its chunks match the image's digests (the engine's check), anything else only when
the whole blob matched its digest (`prove_whole`: the bytes are staged, and become present
with the verified blob). Only blobs an origin served anonymously (public) take part: a private
blob's bytes never leave this agent for the cluster, and its reads stay with the origin. No
client credential goes to the scheduler or to a parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from dragonfly_api import common_pb2

from dfagent.core.limits import PaceWatch
from dfagent.dragonfly import vortex
from dfagent.dragonfly.ids import peer_id, task_id_for_url
from dfagent.engine.network import Answer, PeerPiece, PieceCheck, WholeFill
from dfagent.errors import DfagentError, VortexError
from dfagent.integrity import sha256_of
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.swarm.dragonfly.arrival import Arrival
from dfagent.swarm.dragonfly.config import DragonflyConfig
from dfagent.swarm.dragonfly.layout import DragonflyPieces
from dfagent.swarm.dragonfly.parents import ParentLinks
from dfagent.swarm.dragonfly.scheduler import (
    MAX_PARENTS,
    Assignment,
    Parent,
    PeerStream,
    SchedulerError,
    Schedulers,
    duration,
    timestamp_now,
)
from dfagent.swarm.dragonfly.upload import HeldPieces
from dfagent.tasks import TaskOwner

__all__ = ["DragonflyMember", "HostIdentity"]

log = logging.getLogger(__name__)

_PIECES_AHEAD = 4  # Dragonfly pieces fetched at once while filling a whole blob
_CHECK_SECONDS = 120.0  # for the whole-blob check after a fill
_MAX_TASKS = 4096  # peer tasks followed at once (blobs read and not yet whole here)
_RETRY_SECONDS = 10.0  # a task the scheduler lost is registered again after this long
_BURST_SECONDS = 0.02  # a parent's list of pieces has ended when it is quiet this long
# A parent that sends less of a piece than this in a whole dragonfly.piece_timeout is
# trickling: each byte would restart the read timeout and hold the piece (and every read
# waiting for it) for as long as the parent likes. As the builtin swarm's peers are held to.
_MIN_BYTES_PER_PIECE_TIMEOUT = 32 * 1024
_MAX_PORT = 65535


@dataclass(frozen=True, slots=True)
class HostIdentity:
    host_id: str
    hostname: str
    ip: str


@dataclass(slots=True)
class _Task:
    """One blob's peer task at the scheduler."""

    digest: str
    task_id: str
    peer_id: str
    pieces: DragonflyPieces
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    stream: PeerStream | None = None
    back_to_source: bool = True
    parents: dict[str, Parent] = field(default_factory=dict)
    # The jobs learning what each parent has (SyncPieces): cancelled when the parent is
    # dropped or the task forgotten, whatever the parent does with its stream.
    syncs: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # What each parent said it has: Dragonfly piece number -> (ip, Vortex TCP port).
    holdings: dict[str, dict[int, tuple[str, int]]] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)  # first word from parents
    grew: asyncio.Event = field(default_factory=asyncio.Event)  # set (and replaced) on news
    reported: set[int] = field(default_factory=set)
    reporting: asyncio.Lock = field(default_factory=asyncio.Lock)  # one report at a time
    from_parent: dict[int, Parent] = field(default_factory=dict)  # who sent a cached piece
    # what the parent said each piece's digest is (checked in transit): no second pass to
    # report a kept copy
    parent_digests: dict[int, str] = field(default_factory=dict)
    # Pieces whose bytes kept here are a parent's (proven): reported as that parent's.
    credited: dict[int, Parent] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def holders(self, number: int) -> list[str]:
        return [p for p, held in self.holdings.items() if number in held]

    def news(self) -> None:
        self.grew.set()
        self.grew = asyncio.Event()


class DragonflyMember:
    def __init__(
        self,
        config: DragonflyConfig,
        identity: HostIdentity,
        schedulers: Schedulers,
        *,
        links: ParentLinks,
        held: HeldPieces,
        store: PieceStore,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self.identity = identity
        self._schedulers = schedulers
        self._links = links
        self._held = held
        self._store = store
        self._metrics = metrics
        self._tasks: dict[str, _Task] = {}
        self._jobs = TaskOwner("dragonfly")
        self._cache: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._cached_bytes = 0
        self._arrivals: dict[tuple[str, int], Arrival] = {}  # pieces on their way
        self._distrusted: set[str] = set()  # blobs whose fill from parents failed the digest
        # Blobs the scheduler sent this (seed) member to fetch: digest hex -> the task's id.
        self._seeding: dict[str, str] = {}

    async def aclose(self) -> None:
        await self._jobs.aclose()
        streams = [task.stream for task in self._tasks.values() if task.stream is not None]
        await asyncio.gather(*(stream.close() for stream in streams))

    # the engine's network ------------------------------------------------------------------

    async def describe(self, digest_hex: str, origin: str) -> tuple[int, str] | None:
        return None  # the size comes from the origin's HEAD, which also proves access

    async def lookup(
        self,
        blob: StoredBlob,
        source: BlobSource,
        indices: list[int],
        *,
        stalled: str | None = None,
    ) -> dict[int, Answer]:
        """Pieces made of nydus chunks come from parents that have every Dragonfly piece they
        touch; anything else from the origin (a whole read uses prove_whole instead). No
        answer names a peer to wait for, so none is ever `stalled`."""
        to_origin = Answer(None, (), True, None)
        if not self._takes_part(blob):
            return dict.fromkeys(indices, to_origin)
        task = await self._task(blob, source)
        answers = {}
        for index in indices:
            holders: list[str] = []
            if not task.back_to_source and blob.layout.chunks(index):
                start, end = blob.layout.bounds(index)
                numbers = task.pieces.covering(start, end)
                holders = [p for p in task.holdings if all(n in task.holdings[p] for n in numbers)]
            answers[index] = (
                Answer(None, tuple(holders), not holders, None) if holders else to_origin
            )
        return answers

    async def fetch(
        self,
        blob: StoredBlob,
        index: int,
        answer: Answer,
        *,
        check: PieceCheck | None = None,
        arriving: Callable[[int, bytes], None] | None = None,
    ) -> PeerPiece | None:
        """A parent's piece, usable only with a chunk proof (`arriving` is not told: a
        Dragonfly parent's pieces are not passed on before they are whole here)."""
        task = self._tasks.get(blob.digest.hex)
        if task is None or check is None:  # only a proof makes a parent's piece usable
            return None
        start, end = blob.layout.bounds(index)
        parts = []
        for number in task.pieces.covering(start, end):
            first, last = task.pieces.bounds(number)
            data = await self._first(task, number, min(end, last) - first)  # not a byte more
            if data is None:
                return None
            parts.append(data[max(start - first, 0) :])
        data = b"".join(parts)
        if await check(data):
            self._credit(task, task.pieces.covering(start, end))
            return PeerPiece(data, None)
        self._metrics.dragonfly_bad_pieces.labels("proof").inc()
        for number in task.pieces.covering(start, end):
            self._distrust_piece(task, number)
        return None

    async def progress(self, peer: str, blob: StoredBlob, index: int) -> int | None:
        """Never asked: a scheduler's answers name no peer fetching for this agent."""
        return None

    def release(self, blob: StoredBlob, indices: list[int]) -> None:
        """Nothing to release: the scheduler keeps no leases."""

    def announce(self, blob: StoredBlob, index: int, sha256: bytes) -> None:
        task = self._tasks.get(blob.digest.hex)
        if task is not None:
            start, end = blob.layout.bounds(index)
            self._jobs.spawn(
                self._report(task, blob, task.pieces.covering(start, end)), name="report"
            )

    def trusted(self, blob: StoredBlob) -> None:
        """A trust listener: a verified blob's pieces (staged ones included) are all here."""
        task = self._tasks.get(blob.digest.hex)
        if task is not None:
            self._jobs.spawn(self._report(task, blob, range(task.pieces.count)), name="report")
        self._held.wake()

    async def prove_whole(self, blob: StoredBlob, source: BlobSource, fill: WholeFill) -> bool:
        """Fill every missing piece from parents (staged), then wait for the whole check.
        (`fill` is not needed: Dragonfly's pieces are cut apart from the engine's, and staged
        here.)"""
        if not self._takes_part(blob) or blob.digest.hex in self._distrusted:
            return False
        task = await self._task(blob, source, whole=True)
        if task.back_to_source or not task.holdings:
            return False
        layout = blob.layout
        wanted = [
            n for n in range(task.pieces.count)
            if not task.pieces.whole(n, layout, blob.piece_sha256)
        ]  # fmt: skip
        fetches: dict[int, asyncio.Task[bytes | None]] = {}
        staged_until = 0  # our pieces below this index are present or staged
        try:
            for position, number in enumerate(wanted):
                for ahead in wanted[position : position + _PIECES_AHEAD]:
                    if ahead not in fetches:
                        download = self._piece(task, ahead)
                        fetches[ahead] = self._jobs.spawn(download, name="dragonfly-piece")
                data = await fetches.pop(number)
                if data is None:
                    return False
                staged_until = await self._stage(task, blob, number, data, staged_until)
        except (DfagentError, OSError) as exc:
            log.warning("filling a blob from Dragonfly parents failed",
                        extra={"digest": str(blob.digest), "error": str(exc)})  # fmt: skip
            return False
        finally:
            for pending in fetches.values():
                pending.cancel()
        # Every missing piece is now a parent's, staged: if the blob proves whole (and is
        # reported at once), that is where its bytes came from.
        self._credit(task, wanted)
        try:
            async with asyncio.timeout(_CHECK_SECONDS):
                await blob.checked.wait()
        except TimeoutError:
            self._uncredit(task, wanted)
            return False
        if not blob.verified:
            self._distrusted.add(blob.digest.hex)
            self._metrics.dragonfly_bad_pieces.labels("proof").inc(len(wanted))
            self._uncredit(task, wanted)  # what the blob gets later comes from the origin
            log.warning("a blob filled from Dragonfly parents failed its digest; its reads "
                        "go to the origin", extra={"digest": str(blob.digest)})  # fmt: skip
        return blob.verified

    async def _stage(
        self, task: _Task, blob: StoredBlob, number: int, data: bytes, staged_until: int
    ) -> int:
        """Stage our pieces that end within Dragonfly piece `number` (whose bytes are
        `data`); a piece that began in an earlier one takes its head from the cache."""
        layout = blob.layout
        first, end = task.pieces.bounds(number)
        index = max(staged_until, layout.index_of(first))
        while index < layout.count:
            start, stop = layout.bounds(index)
            if stop > end:
                break
            if not blob.has(index) and index not in blob.staged:
                if start >= first:
                    piece = data[start - first : stop - first]
                else:
                    head = await self._piece(task, number - 1)
                    if head is None:
                        raise DfagentError(f"piece {number - 1} is gone from every parent")
                    head_start, _ = task.pieces.bounds(number - 1)
                    piece = head[start - head_start :] + data[: stop - first]
                sha256 = await asyncio.to_thread(sha256_of, piece)
                await self._store.piece_staged(blob, index, piece, sha256)
            index += 1
        return index

    @contextlib.contextmanager
    def back_to_source(self, digest_hex: str, task_id: str) -> Iterator[None]:
        """The scheduler asked this seed member to fetch the blob from its origin for task
        `task_id`: while in the block, the blob's next registration is that task's, and says
        so (the scheduler then sends no parents). Leaving the block (the seed is done, or
        failed) forgets what the registration did not use."""
        self._seeding[digest_hex] = task_id
        try:
            yield
        finally:
            if self._seeding.get(digest_hex) == task_id:
                del self._seeding[digest_hex]

    # peer tasks ------------------------------------------------------------------------------

    def _takes_part(self, blob: StoredBlob) -> bool:
        return blob.public and not blob.removed

    async def _task(self, blob: StoredBlob, source: BlobSource, *, whole: bool = False) -> _Task:
        """The blob's peer task, registered on first use (a scheduler that does not answer
        leaves it going to the origin, unreported). A whole read waits for the scheduler's
        answer, however long it tries for parents (up to ANSWER_SECONDS): its client is served
        only once the blob is proven whole anyway, and the wait may spare the origin a copy.
        A lazy read waits only until dragonfly.schedule_timeout after the registration; until
        the answer comes, reads go to the origin and the registration goes on."""
        task = self._tasks.get(blob.digest.hex)
        if task is not None and task.ready.is_set() and self._lost(task):
            self._forget(task)  # the scheduler lost it: register again
            task = None
        if task is None:
            ip, hostname = self.identity.ip, self.identity.hostname
            task_id = self._seeding.get(blob.digest.hex)  # as the scheduler named it
            if task_id is None:
                task_id = self._task_id(blob, source)
            pieces = DragonflyPieces.of(blob.size)
            task = _Task(blob.digest.hex, task_id, peer_id(ip, hostname), pieces)
            self._tasks[blob.digest.hex] = task
            if len(self._tasks) > _MAX_TASKS:
                self._forget(self._tasks[next(iter(self._tasks))])
            self._held.name(task_id, blob.digest.hex)
            self._jobs.spawn(self._register(task, blob, source), name="dragonfly-register")
        if whole:
            await task.ready.wait()
        else:
            patience = task.started + self._config.schedule_timeout - time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(patience, 0)):
                    await task.ready.wait()
        return task

    def _task_id(self, blob: StoredBlob, source: BlobSource) -> str:
        """The blob's task id as dragonfly.task_id says; by digest for a URL dfdaemon could not
        name (then no dfget download of it is found)."""
        if self._config.task_id == "url":
            try:
                return task_id_for_url(str(source.url))
            except ValueError as exc:
                log.info("task named by digest", extra={"url": str(source.url), "why": str(exc)})
        return blob.digest.hex

    async def _register(self, task: _Task, blob: StoredBlob, source: BlobSource) -> None:
        try:
            await self._schedule(task, blob, source)
        finally:
            task.ready.set()  # whatever happened: reads waiting for the answer go on
        await self._report(task, blob, range(task.pieces.count))  # what is here already

    async def _schedule(self, task: _Task, blob: StoredBlob, source: BlobSource) -> None:
        """Register the download and follow the parents named (or not: the origin)."""
        pieces = task.pieces
        download = common_pb2.Download(
            url=str(source.url),
            digest=str(blob.digest),
            type=common_pb2.STANDARD,
            priority=common_pb2.LEVEL6,
            enable_task_id_based_blob_digest=self._config.task_id == "digest",
            actual_content_length=pieces.size,
            actual_piece_length=pieces.length,
            actual_piece_count=pieces.count,
            need_back_to_source=self._seeding.pop(task.digest, None) is not None,
        )
        stream = self._schedulers.peer_stream(self.identity.host_id, task.task_id, task.peer_id)
        try:
            assignment = await stream.register(download)
            task.back_to_source = assignment.back_to_source or not assignment.parents
            await stream.started(back_to_source=task.back_to_source)
        except SchedulerError as exc:
            log.info("scheduler did not take the download; reading from the origin",
                     extra={"digest": task.digest, "error": str(exc)})  # fmt: skip
            self._jobs.spawn(stream.close(), name="dragonfly-close")  # reads need not wait
            return
        task.stream = stream
        log.debug("scheduled", extra={"digest": task.digest, "task": task.task_id,
                  "parents": ",".join(p.peer_id for p in assignment.parents),
                  "back_to_source": task.back_to_source, "reason": assignment.reason})  # fmt: skip
        if not task.back_to_source:
            self._follow(task, assignment)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._config.schedule_timeout):
                    await task.synced.wait()
                    # a parent sends what it has in one burst: take all of it in
                    while True:
                        async with asyncio.timeout(_BURST_SECONDS):
                            await task.grew.wait()

    @staticmethod
    def _lost(task: _Task) -> bool:
        """A task whose registration failed, or whose stream broke before the blob was whole
        here, once _RETRY_SECONDS have passed since it was registered (until then its reads go
        to the origin without asking a scheduler that just failed)."""
        broken = task.stream is None or task.stream.closed
        return broken and time.monotonic() - task.started > _RETRY_SECONDS

    def _forget(self, task: _Task) -> None:
        """Drop a peer task (its blob is whole here, or it is the oldest of too many); a
        later read of a blob not whole registers again."""
        if self._tasks.get(task.digest) is task:
            del self._tasks[task.digest]
        for sync in task.syncs.values():
            sync.cancel()
        task.syncs.clear()
        if task.stream is not None and not task.stream.closed:
            self._jobs.spawn(task.stream.close(), name="dragonfly-close")

    def _follow(self, task: _Task, assignment: Assignment) -> None:
        """Learn what the assignment's new parents have, up to MAX_PARENTS at once (no task
        of a forgotten blob)."""
        for parent in assignment.parents:
            if len(task.parents) >= MAX_PARENTS or self._tasks.get(task.digest) is not task:
                return
            if parent.peer_id not in task.parents:
                task.parents[parent.peer_id] = parent
                sync = self._jobs.spawn(self._sync(task, parent), name="dragonfly-sync")
                task.syncs[parent.peer_id] = sync

    async def _sync(self, task: _Task, parent: Parent) -> None:
        """Learn, as they become whole there, which pieces `parent` has. A piece the task
        does not have, or one without a Vortex port, is ignored."""
        held = task.holdings.setdefault(parent.peer_id, {})
        numbers = range(task.pieces.count)
        ignored = False
        try:
            async for piece in self._links.sync_pieces(
                parent, self.identity.host_id, task.task_id, numbers
            ):
                if piece.number not in numbers or not 0 < piece.tcp_port <= _MAX_PORT:
                    if not ignored:
                        ignored = True
                        log.info("a parent named a piece the task does not have, or no port",
                                 extra={"parent": parent.peer_id, "piece": piece.number,
                                        "port": piece.tcp_port})  # fmt: skip
                    continue
                held[piece.number] = (piece.ip or parent.ip, piece.tcp_port)
                task.synced.set()
                task.news()
        except DfagentError as exc:
            log.info("parent stopped answering", extra={"parent": parent.peer_id,
                                                         "error": str(exc)})  # fmt: skip
            await self._drop_parent(task, parent, str(exc))
        finally:
            task.synced.set()
            task.news()

    async def _drop_parent(self, task: _Task, parent: Parent, why: str) -> None:
        """Stop using `parent`; ask the scheduler for others when none is left."""
        task.holdings.pop(parent.peer_id, None)
        task.parents.pop(parent.peer_id, None)
        sync = task.syncs.pop(parent.peer_id, None)
        if sync is not None and sync is not asyncio.current_task():
            sync.cancel()
        task.news()
        if task.parents or task.stream is None or task.stream.closed:
            return
        try:
            assignment = await task.stream.reschedule([parent], why)
        except SchedulerError as exc:
            log.info("reschedule failed", extra={"digest": task.digest, "error": str(exc)})
            return
        self._follow(task, assignment)

    def _distrust_piece(self, task: _Task, number: int) -> None:
        """A parent's piece failed a proof: forget it (and every parent's claim to it is
        checked again on the next fetch)."""
        parent = self._forget_piece(task, number)
        if parent is not None:
            log.warning("a Dragonfly parent sent a piece that fails its proof; dropping it",
                        extra={"parent": parent.peer_id, "digest": task.digest,
                               "piece": number})  # fmt: skip
            self._jobs.spawn(
                self._drop_parent(task, parent, "a piece failed its proof"), name="drop-parent"
            )

    def _forget_piece(self, task: _Task, number: int) -> Parent | None:
        """Drop a parent's copy of piece `number` whose bytes failed a proof from the cache;
        the parent that sent it, if any."""
        dropped = self._cache.pop((task.task_id, number), None)
        self._cached_bytes -= len(dropped or b"")
        task.parent_digests.pop(number, None)
        return task.from_parent.pop(number, None)

    @staticmethod
    def _credit(task: _Task, numbers: Iterable[int]) -> None:
        """The parents' copies of pieces `numbers` are the bytes kept here."""
        for number in numbers:
            parent = task.from_parent.get(number)
            if parent is not None:
                task.credited[number] = parent

    def _uncredit(self, task: _Task, numbers: Iterable[int]) -> None:
        """The parents' copies of `numbers` were not kept (the whole blob failed its check, or
        was not checked in time): the blob's bytes come from the origin instead."""
        for number in numbers:
            task.credited.pop(number, None)
            self._forget_piece(task, number)

    async def _report(self, task: _Task, blob: StoredBlob, numbers: range) -> None:
        """Tell the scheduler of every Dragonfly piece in `numbers` now whole here; and that
        the download finished once all are."""
        async with task.reporting:
            await self._report_now(task, blob, numbers)

    async def _report_now(self, task: _Task, blob: StoredBlob, numbers: range) -> None:
        stream = task.stream
        if stream is None or stream.closed or not self._takes_part(blob):
            return
        pieces = task.pieces
        grew = False
        try:
            for number in numbers:
                if number in task.reported or not pieces.whole(
                    number, blob.layout, blob.piece_sha256
                ):
                    continue
                task.reported.add(number)
                grew = True
                start, end = pieces.bounds(number)
                parent = task.credited.get(number)
                digest = task.parent_digests.get(number) if parent else None
                if not digest:
                    digest = vortex.crc32_digest(zlib.crc32(await self._held.read(blob, number)))
                traffic = common_pb2.REMOTE_PEER if parent else common_pb2.BACK_TO_SOURCE
                await stream.piece_finished(
                    common_pb2.Piece(
                        number=number,
                        parent_id=parent.peer_id if parent else "",
                        offset=start,
                        length=end - start,
                        digest=digest,
                        traffic_type=traffic,
                        cost=duration(time.monotonic() - task.started),
                        created_at=timestamp_now(),
                    )
                )
                self._metrics.dragonfly_download_bytes.labels(
                    common_pb2.TrafficType.Name(traffic)
                ).inc(end - start)
            if len(task.reported) == pieces.count:
                await stream.finished(back_to_source=task.back_to_source)
                self._forget(task)  # whole here: reads need the cluster no more
        except (SchedulerError, OSError, DfagentError) as exc:
            log.info("could not report pieces to the scheduler",
                     extra={"digest": task.digest, "error": str(exc)})  # fmt: skip
            await stream.close()
        if grew:
            self._held.wake()

    # Dragonfly pieces from parents ---------------------------------------------------------

    async def _piece(self, task: _Task, number: int) -> bytes | None:
        """Dragonfly piece `number`, whole and checked in transit; None when no parent
        delivered it."""
        start, end = task.pieces.bounds(number)
        return await self._first(task, number, end - start)

    async def _first(self, task: _Task, number: int, count: int) -> bytes | None:
        """The first `count` bytes of Dragonfly piece `number` from a parent that has it, as
        soon as they are here (one download, shared by every read that wants the piece);
        None when no parent delivered them."""
        key = (task.task_id, number)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached[:count]
        arrival = self._arrivals.get(key)
        if arrival is None:
            start, end = task.pieces.bounds(number)
            arrival = self._arrivals[key] = Arrival(end - start)
            self._jobs.spawn(self._download(task, number, arrival), name="vortex")
        return await arrival.first(count)

    async def _download(self, task: _Task, number: int, arrival: Arrival) -> None:
        key = (task.task_id, number)
        try:
            for holder in await self._holders(task, number):
                address = task.holdings.get(holder, {}).get(number)
                parent = task.parents.get(holder)
                if address is None or parent is None:
                    continue
                arrival.restart()
                try:
                    reply = await vortex.download_piece(
                        *address, task.task_id, number, read_timeout=self._config.piece_timeout
                    )
                    digest = await _receive(reply, arrival, self._config.piece_timeout)
                except (VortexError, OSError, TimeoutError) as exc:
                    self._metrics.dragonfly_bad_pieces.labels("transfer").inc()
                    log.info("a parent did not deliver a piece", extra={
                        "parent": holder, "piece": number, "error": str(exc)})  # fmt: skip
                    task.holdings.get(holder, {}).pop(number, None)
                    if task.stream is not None and not task.stream.closed:
                        with contextlib.suppress(SchedulerError):
                            await task.stream.piece_failed(number, parent)
                    continue
                task.from_parent[number] = parent
                task.parent_digests[number] = digest
                arrival.end(whole=True)
                data = await arrival.first(arrival.length)
                assert data is not None  # every byte arrived, checked in transit
                self._remember(key, data)
                return
        finally:
            if self._arrivals.get(key) is arrival:
                del self._arrivals[key]
            arrival.end(whole=False)  # no effect once whole

    async def _holders(self, task: _Task, number: int) -> list[str]:
        """Parents that have piece `number`, in random order; waits (up to
        dragonfly.piece_timeout) for one to say it has it while any parent is left."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._config.piece_timeout):
                while not task.holders(number) and task.parents:
                    await task.grew.wait()
        holders = task.holders(number)
        return random.sample(holders, len(holders))

    def _remember(self, key: tuple[str, int], data: bytes) -> None:
        self._cache[key] = data
        self._cached_bytes += len(data)
        while self._cached_bytes > self._config.piece_cache_bytes and self._cache:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= len(dropped)


async def _receive(reply: vortex.PieceReply, arrival: Arrival, window: float) -> str:
    """Feed a parent's piece into `arrival` as it comes; its digest once all of it matched.
    VortexError when it is not the piece's length, breaks off, fails its digest, or trickles
    (less than _MIN_BYTES_PER_PIECE_TIMEOUT in a `window`)."""
    async with reply:
        if reply.metadata.length != arrival.length:
            number, length = reply.metadata.number, reply.metadata.length
            raise VortexError(f"piece {number} has {length} bytes there, not {arrival.length}")
        pace = PaceWatch(window, _MIN_BYTES_PER_PIECE_TIMEOUT)
        async for data in reply:
            arrival.add(data)
            try:
                pace.arrived(len(data))
            except TimeoutError as exc:
                raise VortexError(f"piece {reply.metadata.number}: {exc}") from None
    return reply.metadata.digest
