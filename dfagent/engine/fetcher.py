"""The heart of the agent: serve any byte range of a blob from the cache, else the origin.

For a read of `first..last`, `Engine.segments` yields, in order, either `FileSegment`s (bytes
already stored, to be sent with sendfile) or memoryviews of pieces arriving from the origin.
Each missing piece is fetched once however many readers want it (single-flight through
`_inflight`); runs of neighbouring missing pieces go to the origin as one ranged GET, and the
pieces ahead of a reader are requested before it gets there (read-ahead). Every fetched piece
is hashed while it arrives, written to its blob's sparse file, then recorded with its sha256.
Fetches belong to the engine, not to a request: a client that goes away never cancels a fetch
that others share.

Provenance: a blob's bytes are the word of the registry that created it (`StoredBlob.origin`)
until its sha256 has been checked whole. Until then only that registry's bytes (from it, or
from peers that got them from it) fill the blob: every claim, fill and persist checks it. A
request naming another registry is served straight through, uncached (NotShareable).

Chunk proofs: a nydus data blob whose chunk map is known (ChunkProofs) is cut along its chunks
(storage.layout). Each piece made of chunks is proven against the image's chunk digests before
any reader gets a byte of it, whatever its source: the origin, a peer, or this node's disk
after a restart. A piece that fails is never served: it is fetched once more (the swarm may
name another holder), and a second failure reaches the reader as an error. Proven pieces also
serve, and may be filled by, every registry that vouched for the map (its bootstrap gave the
same map): chunk digests, not provenance, prove them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from dfagent.core.limits import Pacer
from dfagent.engine.access import AccessGate
from dfagent.engine.inflight import InflightPiece
from dfagent.engine.network import Answer, PieceCheck, PieceNetwork
from dfagent.engine.proofs import ChunkProofs, KnownMap
from dfagent.engine.readahead import SequentialReads
from dfagent.engine.refute import MapDoubts
from dfagent.errors import (
    DfagentError,
    IntegrityError,
    OriginError,
    OriginHTTPError,
    OriginSizeMismatch,
    RangeNotSatisfiable,
)
from dfagent.integrity import sha256_of
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource, OriginClient, RangeBody
from dfagent.storage.layout import ChunkLayout, PieceSpan, piece_size_of
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.swarm.client import PeerError
from dfagent.swarm.directory import STALL_SECONDS
from dfagent.tasks import TaskOwner

__all__ = ["Engine", "FileSegment", "NotShareable"]

log = logging.getLogger(__name__)

_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()  # the one blob of size 0
_RUN_BYTES = 4 * 1024 * 1024  # read-ahead window, and the usual size of one origin request
# Read-ahead on sequential patterns (see SequentialReads): a read within this many bytes of
# where a pattern's last read ended continues it; a pattern that read the trigger's worth is
# read ahead of by as much again, up to _RUN_BYTES.
_SEQUENTIAL_SLACK = 64 * 1024
_SEQUENTIAL_TRIGGER = 1024 * 1024
_SEQUENTIAL_BLOBS = 1024  # blobs whose reads are followed
_WRITE_DRAIN_SECONDS = 10.0
_CHECK_WAIT_SECONDS = 60.0  # for a completed blob's whole check (it hashes the whole file)
# A whole read filled with staged pieces (see WholeFill.proven) looks this often whether its
# blob is proven (or cannot be), for at most this long.
_PROOF_POLL_SECONDS, _PROOF_WAIT_SECONDS = 0.02, 120.0
# How long a reader waits for a peer that is fetching a piece from the origin before going
# to the origin itself.
_LEASE_WAIT_SECONDS = 15.0
# A peer fetching a piece others wait for counts as stalled once no byte of that piece has
# reached it for STALL_SECONDS (a stalled origin connection, a stuck disk): the first waiter
# to report it takes its fetch over (see Directory.lookup). Before its first byte of the piece
# it gets longer: a registry may take seconds to answer (a token to fetch, a redirect to
# follow), and another node asking it would wait as long.
_FIRST_BYTE_STALL_SECONDS = 5.0
# Between two lookups of a piece a peer has or is getting: the first wait, doubled up to the last.
_FIRST_POLL_SECONDS, _LAST_POLL_SECONDS = 0.005, 0.1
_STORAGE_WARNING_INTERVAL = 60.0  # a full disk is logged at most this often
# Whole pieces waiting for the disk. When the origin is faster than the disk, origin reads
# wait here instead of piling up buffers (memory stays bounded whatever the blob size).
_WRITE_BACKLOG_BYTES = 64 * 1024 * 1024


class _ByteBudget:
    """At most `limit` bytes held at once (one holder may exceed it alone)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._freed = asyncio.Event()

    async def take(self, count: int) -> None:
        while self._held and self._held + count > self._limit:
            await self._freed.wait()
        self._held += count

    def give(self, count: int) -> None:
        self._held -= count
        self._freed.set()
        self._freed = asyncio.Event()


class NotShareable(DfagentError):
    """This request may not use the cached copy (see Engine.blob); serve it straight through."""


@dataclass(frozen=True, slots=True)
class FileSegment:
    """Stored bytes `[offset, offset + count)` of `blob`, ready to send from its data file."""

    blob: StoredBlob
    offset: int
    count: int


class Engine:
    def __init__(
        self,
        store: PieceStore,
        origin: OriginClient,
        metrics: Metrics,
        *,
        access: AccessGate,
        proofs: ChunkProofs,
        verify_reads: bool = False,
        background_bandwidth: int | None = None,
        network: PieceNetwork | None = None,
    ) -> None:
        """`background_bandwidth`: bytes per second that origin reads nobody waits for may take
        together (`background_pacer`: completions, a doubted chunk map's whole reads)."""
        self._access = access
        self._proofs = proofs
        self.background_pacer = Pacer(background_bandwidth)
        self._doubts = MapDoubts(store, origin, proofs, metrics, pacer=self.background_pacer)
        self._network = network
        self._store = store
        self._origin = origin
        self._metrics = metrics
        self._verify_reads = verify_reads
        self._client_runs = 0
        self._quiet = asyncio.Event()  # set while no client-driven origin fetch runs
        self._quiet.set()
        self._tasks = TaskOwner("engine")
        self._writes = TaskOwner("engine-writes")
        self._storage_warned_at = -_STORAGE_WARNING_INTERVAL
        self._cuts_warned: set[tuple[int | None, int | None]] = set()  # see _cut_differently
        self._write_backlog = _ByteBudget(_WRITE_BACKLOG_BYTES)
        self._inflight: dict[tuple[str, int], InflightPiece] = {}
        self._claimed = asyncio.Event()  # set (and replaced) whenever a piece is claimed
        self._discovering: dict[tuple[str, str | None, str], asyncio.Future[StoredBlob]] = {}
        self._sequential = SequentialReads(
            slack=_SEQUENTIAL_SLACK,
            trigger=_SEQUENTIAL_TRIGGER,
            window=_RUN_BYTES,
            blobs=_SEQUENTIAL_BLOBS,
        )

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._access.aclose()
        await self._proofs.aclose()
        await self._tasks.aclose()  # fetches stop; pieces already whole are still written
        await self._writes.drain(_WRITE_DRAIN_SECONDS)
        await self._doubts.aclose()  # after the writes: a failing proof may still doubt

    # blob identity and size ----------------------------------------------------------------

    async def blob(
        self, source: BlobSource, first_byte: int | None = None, *, for_client: bool = True
    ) -> StoredBlob:
        """The blob's handle, learning its size from the origin on first sight.

        With `first_byte` the size comes from the ranged GET of the piece holding that byte,
        which then keeps streaming into the cache (no extra round trip on the cold path);
        without it, from a HEAD. Concurrent first sights with the same credentials share one
        origin request.

        Raises NotShareable when the blob came from another registry and is not verified yet:
        until its bytes are checked against the digest, they are only that registry's word.
        With `for_client` (a client will read the bytes) the client's access must also be
        proven (AccessGate: the registry it names accepts its credentials and holds the
        blob); a completion a peer asks for serves nobody and skips that check. A handle
        evicted while the check ran is looked up again; the caller pins the handle it gets
        before its next await.
        """
        while True:
            blob = await self._store.open_blob(source.digest)
            if blob is not None and not _vouched(blob):
                if not await self._store.evict(blob.digest.hex):
                    raise NotShareable(f"{source.digest} is cached from an unvouched registry")
                continue
            if blob is None:
                key = (source.digest.hex, source.authorization, source.origin)
                found = self._discovering.get(key)
                if found is None:
                    found = asyncio.get_running_loop().create_future()
                    found.add_done_callback(_mark_retrieved)
                    self._discovering[key] = found
                    discover = self._discover(source, first_byte, key, found)
                    self._tasks.spawn(discover, name="discover")
                blob = await asyncio.shield(found)
            if not self._shareable(blob, source):
                raise NotShareable(f"{source.digest} is cached from another registry, unverified")
            if not for_client:
                return blob
            await self._access.ensure(source, blob)  # (a check that waits pins the blob)
            if not blob.removed:  # the caller pins it before its next await
                return blob

    @staticmethod
    def _shareable(blob: StoredBlob, source: BlobSource) -> bool:
        """Whether some bytes for `source` may be read from, and written into, `blob`: all of
        them (verified, or its provenance), or the pieces made of chunks (a voucher)."""
        return blob.verified or source.origin in (blob.origin, *blob.vouchers)

    @staticmethod
    def _piece_shareable(blob: StoredBlob, origin: str, index: int) -> bool:
        """Whether piece `index` of `blob` may serve, and be filled for, clients of `origin`."""
        if blob.verified or origin == blob.origin:
            return True
        return origin in blob.vouchers and bool(blob.layout.chunks(index))

    async def _discover(
        self,
        source: BlobSource,
        first_byte: int | None,
        key: tuple[str, str | None, str],
        found: asyncio.Future[StoredBlob],
    ) -> None:
        try:
            chunks = await self._proofs.known(source.digest.hex)
            _check_provenance(source, chunks)
            # The blob's size is not known yet: a layout as large as can be tells where the
            # piece holding `first_byte` ends, and the key peers must share.
            unsized = await asyncio.to_thread(  # a large map takes a while to cut
                self._store.layout, 1 << 62, None if chunks is None else chunks.chunk_map
            )
            if self._network is not None:
                # Peers may have it: learn the size from the swarm, or from a HEAD (no bytes:
                # which pieces go to the origin is the blob's home's call).
                known = await self._network.describe(source.digest.hex, source.origin)
                if known is not None and known[1] == unsized.key:
                    size, asked = known[0], False
                else:
                    if known is not None:
                        self._cut_differently(source, known[1], unsized.key)
                    size, asked = await self._origin.blob_size(source), True
                    self._access.vouch(source)
                found.set_result(await self._create(source, size, chunks, answered=asked))
                return
            if first_byte is None:
                size = await self._origin.blob_size(source)
                self._access.vouch(source)
                found.set_result(await self._create(source, size, chunks, answered=True))
                return
            piece_last = unsized.bounds(unsized.index_of(first_byte))[1] - 1
            try:
                async with self._origin.open_range(source, first_byte, piece_last) as body:
                    self._access.vouch(source)
                    blob = await self._create(source, body.total, chunks, answered=True)
                    found.set_result(blob)
                    self._discovering.pop(key, None)
                    # Keep this response: it already carries the bytes the reader wants first.
                    if first_byte < blob.size:
                        group = [blob.layout.index_of(first_byte)]
                        run = self._plan(blob, source, group, first_byte)
                        if run is not None:
                            await self._fill(run, body)
            except RangeNotSatisfiable as exc:
                self._access.vouch(source)  # the origin told these credentials the size
                found.set_result(await self._create(source, exc.size, chunks, answered=True))
        except BaseException as exc:
            if not found.done():
                if isinstance(exc, asyncio.CancelledError):
                    found.cancel()
                else:
                    found.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._discovering.pop(key, None)

    def _cut_differently(self, source: BlobSource, theirs: str, ours: str) -> None:
        """The swarm cuts a blob into pieces of another size than this agent (a chunk map
        known on one side only is no such sign): they share none of it. Said once per pair of
        sizes, not once per blob."""
        sizes = (piece_size_of(theirs), piece_size_of(ours))
        if None in sizes or sizes[0] == sizes[1] or sizes in self._cuts_warned:
            return
        self._cuts_warned.add(sizes)
        log.warning(
            "another agent of the swarm cuts blobs into pieces of another size than"
            " storage.piece_size here; the two share none of them: set the same piece_size on"
            " every agent",
            extra={
                "digest": str(source.digest),
                "swarm_piece_size": sizes[0],
                "piece_size": sizes[1],
            },
        )

    async def _create(
        self, source: BlobSource, size: int, chunks: KnownMap | None, *, answered: bool
    ) -> StoredBlob:
        """The blob's handle, created for `source` if new (cut along `chunks` when known).
        `answered`: the origin itself just answered `source` for it (an anonymous answer makes
        the blob public)."""
        if size == 0 and source.digest.hex != _EMPTY_SHA256:
            raise OriginError(f"origin says {source.digest} is empty; it is not")
        public = answered and source.authorization is None
        try:
            return await self._store.create_blob(
                source.digest,
                size,
                source.origin,
                public=public,
                chunk_map=None if chunks is None else chunks.chunk_map,
                vouchers=frozenset() if chunks is None else chunks.vouchers,
            )
        except OSError as exc:
            log.warning(
                "cannot cache a blob; its readers go straight to the origin",
                extra={"digest": str(source.digest), "size": size, "error": str(exc)},
            )
            raise NotShareable(f"cannot cache {source.digest}: {exc}") from exc

    # reads -----------------------------------------------------------------------------------

    async def segments(
        self, blob: StoredBlob, source: BlobSource, first: int, last: int
    ) -> AsyncIterator[FileSegment | memoryview]:
        """Bytes `first..last` of `blob`, in order, from the cache or as they arrive.

        A read of a whole unverified blob first lets the network fill it from peers whose
        bytes only the blob's digest proves (Dragonfly parents, stripe-tree parents): they
        are served only once the whole blob matched it."""
        if self._network is not None and not blob.verified and (first, last) == (0, blob.size - 1):
            with blob.pinned():
                await self._network.prove_whole(blob, source, _WholeFill(self, blob, source))
        local = self._metrics.served_bytes.labels("local")
        async for part in self._parts(blob, source, first, last):
            if isinstance(part, FileSegment):
                local.inc(part.count)
            yield part

    async def _parts(
        self, blob: StoredBlob, source: BlobSource, first: int, last: int
    ) -> AsyncIterator[FileSegment | memoryview]:
        with blob.pinned():
            self._store.touch(blob)
            spans = blob.layout.spans(first, last)
            for span in spans:
                if not self._piece_shareable(blob, source.origin, span.index):
                    raise NotShareable(
                        f"{source.origin} may not read bytes {span.start}..{span.end} of "
                        f"{blob.digest}: not proven for its clients"
                    )
            requested_until = 0  # spans[:requested_until] are present or on their way
            planning = not blob.complete  # with every piece here, nothing to fetch or read ahead
            pending: FileSegment | None = None
            for position, span in enumerate(spans):
                if planning and (
                    position >= requested_until
                    or spans[requested_until - 1].end - span.start < 2 * _RUN_BYTES
                ):
                    # keep two runs' worth of pieces coming ahead, topped up piece by piece
                    ahead = _ahead(spans, position, 2 * _RUN_BYTES)
                    requested_until = position + len(ahead)
                    self._start(blob, source, [s.index for s in ahead], span.start)
                    if not position:  # the reader's own first pieces are on their way
                        self._read_ahead(blob, source, first, last)
                if blob.has(span.index) and (
                    self._verify_reads or self._unproven(blob, span.index)
                ):
                    if pending is not None:
                        yield pending
                        pending = None
                    async for part in self._checked_local(
                        blob, source, span.index, span.start, span.end
                    ):
                        yield part
                    continue
                if blob.has(span.index):
                    if pending is not None and pending.offset + pending.count == span.start:
                        pending = FileSegment(
                            blob, pending.offset, pending.count + span.end - span.start
                        )
                    else:
                        if pending is not None:
                            yield pending
                        pending = FileSegment(blob, span.start, span.end - span.start)
                    continue
                if pending is not None:
                    yield pending
                    pending = None
                async for part in self._piece_bytes(blob, source, span.index, span.start, span.end):
                    yield part
            if pending is not None:
                yield pending

    def _read_ahead(self, blob: StoredBlob, source: BlobSource, first: int, last: int) -> None:
        """On a sequential pattern, start fetching the bytes after `last`."""
        ahead = self._sequential.read(blob.digest.hex, first, last)
        end = min(last + 1 + ahead.bytes, blob.size)
        if not blob.layout.file_ends_within(ahead.began, first - 1):
            # A reader within one file may want no other: stop where its file ends (one read
            # that spans a file end is no evidence: nydusd merges neighbouring chunks). One
            # whose earlier reads went on into the next file, and who reads on after that,
            # walks the image in blob order: read ahead across files.
            end = min(end, blob.layout.read_ahead_end(last + 1))
        if end <= last + 1:
            return
        spans = blob.layout.spans(last + 1, end - 1)
        if _lead(spans, lambda index: not self._claimable(blob, index)) * 2 >= end - last - 1:
            # At least half the window is present or on its way: top it up later, in one
            # request for the rest, not one request per piece as the reader moves on (every
            # origin request costs its round trip and the registry's time to first byte).
            return
        shareable = [
            span.index for span in spans if self._piece_shareable(blob, source.origin, span.index)
        ]
        self._start(blob, source, shareable, last + 1)

    @staticmethod
    def _unproven(blob: StoredBlob, index: int) -> bool:
        """A stored piece made of chunks not yet proven by this process (it was stored before
        a restart): its bytes are checked before they are served."""
        return index not in blob.proven and bool(blob.layout.chunks(index))

    async def _checked_local(
        self, blob: StoredBlob, source: BlobSource, index: int, start: int, end: int
    ) -> AsyncIterator[FileSegment | memoryview]:
        """Read the whole stored piece and prove it (its chunks' digests, or with
        storage.verify_reads its recorded sha256), then send the part wanted; a piece that
        fails is dropped and fetched again."""
        piece_start, piece_end = blob.layout.bounds(index)
        data = await asyncio.to_thread(
            os.pread, blob.file.fileno(), piece_end - piece_start, piece_start
        )
        if await self._stored_piece_good(blob, index, data):
            yield memoryview(data)[start - piece_start : end - piece_start]
            return
        await self._store.drop_piece(blob.digest.hex, index, piece_end - piece_start)
        async for part in self._piece_bytes(blob, source, index, start, end):
            yield part

    async def _stored_piece_good(self, blob: StoredBlob, index: int, data: bytes) -> bool:
        if blob.layout.chunks(index):
            return await self._proofs.prove(blob, index, data, "disk")
        expected = blob.piece_sha256.get(index)
        if expected is not None and await asyncio.to_thread(sha256_of, data) == expected:
            return True
        self._metrics.scrub_bad_pieces.inc()
        log.error(
            "stored piece does not match its recorded sha256; fetching it again",
            extra={"digest": str(blob.digest), "piece": index},
        )
        return False

    async def _piece_bytes(
        self, blob: StoredBlob, source: BlobSource, index: int, start: int, end: int
    ) -> AsyncIterator[FileSegment | memoryview]:
        """Bytes `[start, end)` (blob offsets) of one piece, fetching it if nobody is. A piece
        whose proof failed is fetched once more (perhaps from another source)."""
        retried = False
        refetched = False
        while True:
            if blob.has(index):
                yield FileSegment(blob, start, end - start)
                return
            piece = self._inflight.get((blob.digest.hex, index))
            if piece is None:
                self._start(blob, source, [index], start)
                piece = self._inflight.get((blob.digest.hex, index))
                if piece is None:  # dropped from a verified blob; not this registry's to fill
                    raise NotShareable(f"{source.origin} may not fill {blob.digest}")
            try:
                async for view in piece.read(start - piece.start, end - piece.start):
                    self._metrics.served_bytes.labels(piece.source).inc(len(view))
                    yield view
                return
            except OriginHTTPError:
                # Someone else's credentials were refused; ours may not be. Try once on our own.
                if retried or piece.authorization == source.authorization or piece.received:
                    raise
                retried = True
            except _Unproven:
                continue  # not this reader's to prove: fetched the usual way now
            except IntegrityError:
                if refetched:
                    raise
                refetched = True

    # fetching ----------------------------------------------------------------------------------

    def arriving(self, digest_hex: str, index: int, origin: str) -> InflightPiece | None:
        """Piece `index` of a blob while it arrives here with `origin`'s bytes (from the
        origin, or from a peer), for a peer told to take it from this agent meanwhile."""
        piece = self._inflight.get((digest_hex, index))
        return piece if piece is not None and piece.origin == origin else None

    def piece_progress(self, digest_hex: str, index: int) -> int:
        """How many bytes of piece `index` of a blob are here: all of it once held (or
        staged), else those that arrived so far (checked, or from a peer and not checked yet),
        else none."""
        blob = self._store.loaded(digest_hex)
        if blob is not None and (blob.has(index) or index in blob.staged):
            start, end = blob.layout.bounds(index)
            return end - start
        piece = self._inflight.get((digest_hex, index))
        return 0 if piece is None else max(piece.received, piece.passed)

    async def begins(self, digest_hex: str, index: int, within: float) -> bool:
        """Whether piece `index` of a blob is here or arriving, waiting up to `within` seconds
        for it to begin to arrive."""
        key = (digest_hex, index)
        deadline = time.monotonic() + within
        while key not in self._inflight:
            blob = self._store.loaded(digest_hex)
            if blob is not None and (blob.has(index) or index in blob.staged):
                return True
            claimed = self._claimed
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await claimed.wait()
            except TimeoutError:
                return key in self._inflight
        return True

    def _claim(self, blob: StoredBlob, index: int, source: BlobSource) -> InflightPiece | None:
        """Register piece `index` as in flight, or None when it is present or already coming."""
        key = (blob.digest.hex, index)
        if (
            blob.has(index)
            or key in self._inflight
            or not self._piece_shareable(blob, source.origin, index)
        ):
            return None
        start, end = blob.layout.bounds(index)
        gated = bool(blob.layout.chunks(index))
        piece = InflightPiece(
            index, start, end - start, source.authorization, source.origin, gated=gated
        )
        self._inflight[key] = piece
        self._claimed.set()
        self._claimed = asyncio.Event()
        return piece

    def _start(
        self, blob: StoredBlob, source: BlobSource, indices: list[int], from_byte: int
    ) -> None:
        """Fetch every piece in `indices` that is neither present nor in flight: one origin
        request per run of neighbours. A run whose first piece holds `from_byte` past its start
        is fetched from that byte (the reader's first byte comes first); a second request
        fills the head of the piece once the reader's part of it is in."""
        for group in self._groups(blob, indices):
            self._launch(blob, source, group, from_byte)

    def _groups(self, blob: StoredBlob, indices: list[int]) -> list[list[int]]:
        """The pieces of `indices` that are neither present nor in flight, cut into runs of
        neighbours (one origin request each)."""
        groups: list[list[int]] = []
        for index in indices:
            if not self._claimable(blob, index):
                continue
            if groups and groups[-1][-1] + 1 == index:
                groups[-1].append(index)
            else:
                groups.append([index])
        return groups

    def _launch(
        self, blob: StoredBlob, source: BlobSource, group: list[int], from_byte: int
    ) -> None:
        pieces = self._claim_group(blob, source, group)
        if pieces:
            self._tasks.spawn(self._client_acquire(blob, source, pieces, from_byte), name="fill")

    async def _client_acquire(
        self, blob: StoredBlob, source: BlobSource, pieces: dict[int, InflightPiece], from_byte: int
    ) -> None:
        """A fetch some reader waits for: background prefetch holds back while any runs."""
        self._client_runs += 1
        self._quiet.clear()
        try:
            await self._acquire(blob, source, pieces, from_byte)
        finally:
            self._client_runs -= 1
            if not self._client_runs:
                self._quiet.set()

    async def _acquire(
        self, blob: StoredBlob, source: BlobSource, pieces: dict[int, InflightPiece], from_byte: int
    ) -> None:
        """Get claimed pieces from peers when the swarm has them, else from the origin."""
        if self._network is None:
            runs = self._origin_runs(blob, source, pieces, from_byte)
            await asyncio.gather(*(self._fill(run) for run in runs))
            return
        try:
            answers = await self._network.lookup(blob, source, sorted(pieces))
        except BaseException as exc:
            self._abandon(_Run.whole(blob, source, pieces), OriginError("swarm lookup cancelled"))
            if isinstance(exc, Exception):
                log.exception("swarm lookup failed")
                return
            raise
        to_origin = {}
        from_peers = []
        for index, piece in pieces.items():
            answer = answers.get(index)
            if answer is None or answer.fetch:
                to_origin[index] = piece
            else:
                from_peers.append(self._from_peers(blob, source, piece, answer))
        runs = self._origin_runs(blob, source, to_origin, from_byte)
        await asyncio.gather(*(self._fill(run) for run in runs), *from_peers)

    async def _from_peers(
        self, blob: StoredBlob, source: BlobSource, piece: InflightPiece, answer: Answer
    ) -> None:
        """A piece that holders have, or that a peer is receiving right now: take it from them
        (from the receiving peer as its bytes arrive there), else wait for it while bytes keep
        reaching that peer, else take it from the origin."""
        try:
            fallback = await self._ask_peers(blob, source, piece, answer)
        except BaseException as exc:  # its readers (and relays) must not wait for ever
            failed = isinstance(exc, Exception)
            error = OriginError("swarm fetch failed" if failed else "swarm fetch cancelled")
            self._abandon(_Run.whole(blob, source, {piece.index: piece}), error)
            if failed:
                log.exception("swarm fetch failed")
                return
            raise
        if fallback is None:
            return
        reason, why = fallback
        self._metrics.peer_fallbacks.labels(reason).inc()
        log.debug(
            "piece goes to the origin after all",
            extra={"digest": str(blob.digest), "piece": piece.index, "reason": why},
        )
        await self._fill(_Run.whole(blob, source, {piece.index: piece}))

    async def _ask_peers(
        self, blob: StoredBlob, source: BlobSource, piece: InflightPiece, answer: Answer
    ) -> tuple[str, str] | None:
        """The swarm part of _from_peers: None once the piece came from a peer, else why it
        goes to the origin after all (the metric's reason, and words for the log)."""
        assert self._network is not None
        waited_until = time.monotonic() + _LEASE_WAIT_SECONDS
        delay = _FIRST_POLL_SECONDS
        watch = _FetchWatch()
        while True:
            if answer.wait:  # the peer to take it from is about to receive it
                self._metrics.peer_waits.inc()
                if time.monotonic() > waited_until:
                    reason, why = "timeout", f"waited {_LEASE_WAIT_SECONDS:.0f} s for a peer"
                    break
                answer, delay = await self._ask_again(blob, source, piece, delay)
                if answer.fetch:
                    reason, why = "parent_late", "the peer to take it from did not come"
                    break
                continue
            if answer.holders or answer.fetching is not None:
                try:
                    got = await self._network.fetch(
                        blob,
                        piece.index,
                        answer,
                        check=self._peer_check(blob, piece),
                        arriving=piece.arriving,
                    )
                except PeerError:  # all busy: ask again shortly (maybe more holders by then)
                    if time.monotonic() > waited_until:
                        reason, why = "busy", "every holder stayed busy"
                        break
                    answer, delay = await self._ask_again(blob, source, piece, delay)
                    continue
                if got is not None:
                    await self._delivered(blob, source, piece, got.data, got.sha256)
                    return None
                piece.forget_arrivals()
            if answer.fetching is None:
                reason, why = "no_holder", "no holder delivered, and no peer is fetching it"
                break
            if time.monotonic() > waited_until:
                reason, why = "timeout", f"waited {_LEASE_WAIT_SECONDS:.0f} s for {answer.fetching}"
                break
            arrived = await self._network.progress(answer.fetching, blob, piece.index)
            if arrived is None:  # its lease would only expire
                reason, why = "unreachable", f"the fetching peer {answer.fetching} does not answer"
                break
            # A peer to which no byte of the piece arrives any more is reported with the next
            # lookup: its fetch passes to this agent, unless another waiter took it over first.
            stalled = answer.fetching if watch.stalled(answer.fetching, arrived) else None
            # the fetching peer announces the piece when it has it
            answer, delay = await self._ask_again(blob, source, piece, delay, stalled=stalled)
            if answer.fetch and stalled is not None:
                reason = "stalled"
                why = f"no byte reached {stalled} for {STALL_SECONDS} s; its fetch passed here"
                break
            if answer.fetch:
                reason, why = "released", "the home handed this agent the origin fetch"
                break
        return reason, why

    async def _ask_again(
        self,
        blob: StoredBlob,
        source: BlobSource,
        piece: InflightPiece,
        delay: float,
        *,
        stalled: str | None = None,
    ) -> tuple[Answer, float]:
        """The network's answer for the piece after `delay` (reporting `stalled`, the peer
        fetching it that no byte reaches any more), and the delay before the next."""
        assert self._network is not None
        await asyncio.sleep(delay)
        lookup = await self._network.lookup(blob, source, [piece.index], stalled=stalled)
        return lookup[piece.index], min(delay * 2, _LAST_POLL_SECONDS)

    async def _delivered(
        self,
        blob: StoredBlob,
        source: BlobSource,
        piece: InflightPiece,
        data: bytes,
        sha256: bytes | None,
    ) -> None:
        """A peer's copy of the piece passed the network's checks (against its recorded
        `sha256`, when the network records one, and the chunk proof of a gated piece): readers
        may have it."""
        piece.source = "peer"
        piece.sha256 = sha256
        piece.write(0, data)
        if piece.gated:
            piece.release()
        self._metrics.origin_fetches_avoided.inc()
        await self._write_backlog.take(piece.length)
        self._finished(blob, source, piece)

    def _peer_check(self, blob: StoredBlob, piece: InflightPiece) -> PieceCheck | None:
        """The proof a peer's copy of a piece made of chunks must pass (beyond the sha256 its
        home recorded, which only says what the peer announced)."""
        if not piece.gated:
            return None

        async def check(data: bytes) -> bool:
            return await self._proofs.prove(blob, piece.index, data, "peer")

        return check

    async def chunk_maps_learned(self, bootstraps: list[StoredBlob]) -> None:
        """Return once `bootstraps` (completed blobs) were checked whole and the chunk maps
        they hold are known (at most _CHECK_WAIT_SECONDS for the checks)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_CHECK_WAIT_SECONDS):
                for blob in bootstraps:
                    await blob.checked.wait()
        await self._proofs.settled()

    async def until_quiet(self) -> None:
        """Return once no fetch that a reader waits for is running."""
        await self._quiet.wait()

    async def fetch_missing(
        self, blob: StoredBlob, source: BlobSource, indices: list[int], *, for_reader: bool = False
    ) -> int:
        """Fetch, and wait for, the pieces of `indices` that are neither present nor on their
        way; returns the bytes fetched. For background work (prefetch), unless `for_reader`
        (a reader waits for them: background work holds back meanwhile)."""
        fetched = 0
        tasks = []
        acquire = self._client_acquire if for_reader else self._acquire
        for group in self._groups(blob, indices):
            pieces = self._claim_group(blob, source, group)
            fetched += sum(piece.length for piece in pieces.values())
            fill = acquire(blob, source, pieces, blob.layout.bounds(group[0])[0])
            tasks.append(self._tasks.spawn(fill, name="fill" if for_reader else "prefetch-fill"))
        if tasks:
            await asyncio.wait(tasks)
        return fetched

    def _claimable(self, blob: StoredBlob, index: int) -> bool:
        return not blob.has(index) and (blob.digest.hex, index) not in self._inflight

    def _claim_group(
        self, blob: StoredBlob, source: BlobSource, group: list[int]
    ) -> dict[int, InflightPiece]:
        pieces = {}
        for index in group:
            piece = self._claim(blob, index, source)
            if piece is not None:
                pieces[index] = piece
        return pieces

    def _origin_runs(
        self,
        blob: StoredBlob,
        source: BlobSource,
        pieces: dict[int, InflightPiece],
        from_byte: int,
    ) -> list[_Run]:
        """Runs of neighbouring claimed pieces, one origin request each. A run whose first
        piece holds `from_byte` past its start begins at that byte (the reader's first byte
        comes first); a second request, started here, fills the head of the piece once the
        reader's part of it is in (see _fill_head)."""
        runs: list[_Run] = []
        for index in sorted(pieces):
            piece = pieces[index]
            if runs and max(runs[-1].pieces) + 1 == index:
                runs[-1].pieces[index] = piece
                runs[-1].last = piece.start + piece.length - 1
                continue
            first = piece.start
            if piece.start < from_byte < piece.start + piece.length:
                first = from_byte
                head = _Run(blob, source, {index: piece}, piece.start, from_byte - 1)
                self._tasks.spawn(self._fill_head(head, piece), name="fill-head")
            runs.append(_Run(blob, source, {index: piece}, first, piece.start + piece.length - 1))
        return runs

    async def _fill_head(self, head: _Run, piece: InflightPiece) -> None:
        """Fetch the head of a piece that a reader entered part-way, once the reader's part
        of it is in: the two requests would otherwise split the link while the reader waits
        (a piece proven whole is read only once whole, so its head is fetched at once)."""
        if not piece.gated:
            await piece.received_from(head.last + 1 - piece.start)
            if piece.error is not None:
                return
        await self._fill(head)

    def _plan(
        self, blob: StoredBlob, source: BlobSource, group: list[int], from_byte: int
    ) -> _Run | None:
        """Claim `group` (neighbours) for one origin run (see _origin_runs)."""
        runs = self._origin_runs(blob, source, self._claim_group(blob, source, group), from_byte)
        return runs[0] if runs else None

    async def _fill(self, run: _Run, body: RangeBody | None = None) -> None:
        """Fetch `run.position..run.last` from the origin into its pieces, resuming after a
        body that breaks off. `body`, when given, is an already open response for the run."""
        if not all(
            self._piece_shareable(run.blob, run.source.origin, index) for index in run.pieces
        ):
            self._abandon(run, NotShareable(f"{run.source.origin} may not fill {run.blob.digest}"))
            return
        with run.blob.pinned():
            resumes = 0
            try:
                while run.position <= run.last:
                    try:
                        if body is not None:
                            await self._drain(body, run)
                        else:
                            async with self._origin.open_range(
                                run.source, run.position, run.last, run.blob.size
                            ) as fresh:
                                await self._drain(fresh, run)
                    except OriginError as exc:
                        body = None
                        if (
                            isinstance(exc, OriginHTTPError | OriginSizeMismatch)
                            or resumes >= self._origin.retries
                        ):
                            raise
                        resumes += 1
                        log.info("origin read broke off; resuming", extra={"error": str(exc)})
            except (DfagentError, OSError) as exc:
                self._abandon(run, exc)
                if isinstance(exc, OriginSizeMismatch):
                    # Whichever answer was wrong, the record's size is no longer the origin's
                    # word: start again from what the origin says now.
                    self._tasks.spawn(self._store.purge(run.blob, str(exc)), name="purge")
            except BaseException:
                self._abandon(run, OriginError("fetch cancelled"))
                raise

    async def _drain(self, body: RangeBody, run: _Run) -> None:
        """Feed `body` (which starts at `run.position`) into the run's pieces; bytes past
        `run.last` (a response opened for more than this run) are left unread."""
        layout = run.blob.layout
        async for chunk in body.chunks():
            self._metrics.origin_bytes.inc(len(chunk))
            run.blob.arrived += len(chunk)
            view = memoryview(chunk)[: run.last + 1 - run.position]
            while view:
                piece = run.pieces[layout.index_of(run.position)]
                offset = run.position - piece.start
                take = min(len(view), piece.length - offset)
                if piece.write(offset, view[:take]) and piece.error is None:
                    await self._write_backlog.take(piece.length)
                    self._finished(run.blob, run.source, piece)
                view = view[take:]
                run.position += take
            if run.position > run.last:
                return

    def _finished(self, blob: StoredBlob, source: BlobSource, piece: InflightPiece) -> None:
        self._metrics.piece_fetch_seconds.labels(piece.source).observe(
            time.monotonic() - piece.started_at
        )
        self._writes.spawn(self._persist(blob, source, piece), name="persist")

    async def _persist(self, blob: StoredBlob, source: BlobSource, piece: InflightPiece) -> None:
        try:
            if piece.gated and not piece.released:
                if not await self._proofs.prove(blob, piece.index, piece.buffer, piece.source):
                    failed = f"piece {piece.index} of {blob.digest} failed its chunk proof"
                    piece.fail(IntegrityError(failed))
                    if piece.source == "origin":  # the origin lies, or the map does
                        self._doubts.doubt(blob, source, piece.index)
                    if self._network is not None:
                        self._network.release(blob, [piece.index])
                    return
                piece.release()
            if not self._piece_shareable(blob, piece.origin, piece.index):
                return  # another registry's word: served to its reader, never stored here
            with blob.pinned():
                sha256 = await self._store.piece_finished(
                    blob, piece.index, piece.buffer, piece.sha256
                )
            if piece.source == "origin" and piece.authorization is None:
                await self._store.add_origin(blob, piece.origin, public=True)
            if self._network is not None:
                self._network.announce(blob, piece.index, sha256)
        except (DfagentError, OSError) as exc:
            if self._network is not None:  # never announced: whoever waits for it must not wait
                self._network.release(blob, [piece.index])
            now = time.monotonic()
            if now - self._storage_warned_at > _STORAGE_WARNING_INTERVAL:  # not once per piece
                self._storage_warned_at = now
                log.warning(
                    "cannot store pieces; serving them without caching",
                    extra={"digest": str(blob.digest), "piece": piece.index, "error": str(exc)},
                )
        finally:
            self._write_backlog.give(piece.length)
            self._inflight.pop((blob.digest.hex, piece.index), None)

    def _abandon(self, run: _Run, error: BaseException) -> None:
        """Fail the pieces whose bytes from `run` did not all come (a piece whose part of it
        came is left to the request fetching its other part: see _fill_head)."""
        given_up = []
        for piece in run.pieces.values():
            if not run.delivered(piece):
                piece.fail(error)
                given_up.append(piece.index)
                if self._inflight.get((run.blob.digest.hex, piece.index)) is piece:
                    del self._inflight[(run.blob.digest.hex, piece.index)]
        if given_up and self._network is not None:
            # Peers waiting for these pieces go to the origin themselves now, not when the
            # lease expires.
            self._network.release(run.blob, given_up)


class _Unproven(DfagentError):
    """A piece some network filled for a whole read: staged (proven only with the whole blob)
    or not delivered. A reader of that piece alone fetches it again the usual way."""


@dataclass(frozen=True, slots=True)
class _WholeFill:
    """The engine's side (WholeFill) of a network filling one whole blob with staged bytes."""

    engine: Engine
    blob: StoredBlob
    source: BlobSource

    def claim(self, index: int) -> InflightPiece | None:
        if index in self.blob.staged:
            return None
        return self.engine._claim(self.blob, index, self.source)

    async def stage(self, piece: InflightPiece, data: bytes) -> None:
        try:
            with self.blob.pinned():
                await self.engine._store.piece_staged(self.blob, piece.index, data)
        finally:
            self._done(piece)

    def give_up(self, piece: InflightPiece) -> None:
        self._done(piece)

    def _done(self, piece: InflightPiece) -> None:
        """The piece is no longer on its way (a peer relaying it still gets every byte that
        came); a reader of it alone gets it again the usual way (see _piece_bytes)."""
        piece.fail(_Unproven(f"piece {piece.index} of {self.blob.digest} is unproven"))
        key = (self.blob.digest.hex, piece.index)
        if self.engine._inflight.get(key) is piece:
            del self.engine._inflight[key]

    async def usual(self, indices: list[int]) -> bool:
        indices = [i for i in indices if i not in self.blob.staged]
        await self.engine.fetch_missing(self.blob, self.source, indices, for_reader=True)
        for index in indices:
            piece = self.engine._inflight.get((self.blob.digest.hex, index))
            if piece is not None:  # (fetched for another reader, perhaps staged for it)
                await piece.received_from(0)
                if piece.whole:
                    continue  # (proven() finds one that is then not stored)
            if not self.blob.has(index) and index not in self.blob.staged:
                return False
        return True

    async def proven(self) -> bool:
        deadline = time.monotonic() + _PROOF_WAIT_SECONDS
        digest = self.blob.digest.hex
        while not self.blob.verified:
            if self.blob.removed or time.monotonic() > deadline:
                return False
            if not self.blob.covered and any(  # (while it is covered, its check runs)
                not self.blob.has(index)
                and index not in self.blob.staged
                and (digest, index) not in self.engine._inflight
                for index in range(self.blob.layout.count)
            ):
                return False  # (a staged piece dropped with a blob that failed its check)
            await asyncio.sleep(_PROOF_POLL_SECONDS)
        return True


@dataclass(slots=True)
class _Run:
    """Neighbouring pieces fetched by one origin request: blob bytes `position..last`."""

    blob: StoredBlob
    source: BlobSource
    pieces: dict[int, InflightPiece]
    position: int
    last: int
    first: int = -1

    def __post_init__(self) -> None:
        self.first = self.position

    @classmethod
    def whole(cls, blob: StoredBlob, source: BlobSource, pieces: dict[int, InflightPiece]) -> _Run:
        """A run of the whole of `pieces` (neighbours)."""
        first = min(piece.start for piece in pieces.values())
        last = max(piece.start + piece.length for piece in pieces.values()) - 1
        return cls(blob, source, pieces, first, last)

    def delivered(self, piece: InflightPiece) -> bool:
        """Whether every byte this run was to bring into `piece` is in."""
        begin = max(self.first, piece.start) - piece.start
        end = min(self.last + 1, piece.start + piece.length) - piece.start
        return piece.available_until(begin) >= end


@dataclass(slots=True)
class _FetchWatch:
    """Whether bytes keep reaching the peer a reader waits for (see STALL_SECONDS)."""

    clock: Callable[[], float] = time.monotonic
    peer: str | None = None
    arrived: int = -1
    moved_at: float = 0.0

    def stalled(self, peer: str, arrived: int) -> bool:
        """Note `peer`'s count; True once it has not moved for STALL_SECONDS (or
        _FIRST_BYTE_STALL_SECONDS while it is still 0). The watch then starts over: a peer is
        reported stalled at most once a period."""
        now = self.clock()
        if (peer, arrived) != (self.peer, self.arrived):
            self.peer, self.arrived, self.moved_at = peer, arrived, now
            return False
        if now - self.moved_at <= (STALL_SECONDS if arrived else _FIRST_BYTE_STALL_SECONDS):
            return False
        self.moved_at = now
        return True


def _check_provenance(source: BlobSource, chunks: KnownMap | None) -> None:
    """A blob with a known chunk map is recorded only under a registry that vouches for the
    map. Its chunks can come from any voucher, with that voucher's clients' credentials: a
    registry that merely answers for the blob must not become its provenance (a recorded
    origin), whose clients would read them. Raises NotShareable: its clients go straight
    through."""
    if chunks is not None and source.origin not in chunks.vouchers:
        raise NotShareable(
            f"{source.origin} gave no image metadata naming {source.digest}; "
            "its chunk map came from another registry"
        )


def _vouched(blob: StoredBlob) -> bool:
    """Whether a blob cut along its chunks came from a registry that vouches for the chunk
    map, as every such blob is now created. One recorded otherwise (by an older agent) is
    forgotten on sight: its provenance never proved it holds the blob, yet it counts as an
    origin of chunks other registries delivered."""
    return not isinstance(blob.layout, ChunkLayout) or blob.origin in blob.vouchers


def _mark_retrieved(future: asyncio.Future[StoredBlob]) -> None:
    """A discovery whose requester went away may fail unobserved; that is not worth a warning."""
    if not future.cancelled():
        future.exception()


def _ahead(spans: list[PieceSpan], position: int, budget: int) -> list[PieceSpan]:
    """The spans from `position` on that fit in `budget` bytes (at least one)."""
    taken = 0
    end = position
    while end < len(spans) and (end == position or taken < budget):
        taken += spans[end].end - spans[end].start
        end += 1
    return spans[position:end]


def _lead(spans: list[PieceSpan], covered: Callable[[int], bool]) -> int:
    """The bytes of `spans` up to the first whose piece is not `covered`."""
    lead = 0
    for span in spans:
        if not covered(span.index):
            break
        lead += span.end - span.start
    return lead
