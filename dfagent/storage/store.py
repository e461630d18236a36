"""Blob data on disk: one sparse file per blob, pieces written at their offsets.

`PieceStore` owns the data directory and the index. It hands out `StoredBlob` handles that
say which pieces are present; a piece becomes present only after its bytes are written
(`piece_finished`). When the last piece of a blob lands, the whole file is checked against the
blob's digest (in a worker thread) and the blob is marked verified, or purged on mismatch.
Reads of present pieces go through the blob's file (sendfile or `pread`); nothing here copies
a whole blob into memory. Blocking calls run in worker threads.

One agent owns a data directory at a time: `lock` in it is held (flock) while the store is open.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dfagent.core.digest import Digest
from dfagent.errors import DfagentError, StartupError, StorageFull
from dfagent.integrity import sha256_of, sha256_of_file
from dfagent.metrics import Metrics
from dfagent.nydus import ChunkMap, NydusFormatError
from dfagent.storage.config import StorageConfig
from dfagent.storage.index import Index
from dfagent.storage.layout import ChunkLayout, FixedLayout, PieceLayout
from dfagent.storage.private import DIR_MODE, FILE_MODE, make_private
from dfagent.tasks import KeyedLocks, TaskOwner

__all__ = ["BlobRemoved", "PieceStore", "StoredBlob"]

log = logging.getLogger(__name__)

_TOUCH_FLUSH_SECONDS = 5.0


class BlobRemoved(DfagentError):
    """The blob was evicted or purged while someone still held its handle."""


class StoredBlob:
    """What this node holds of one blob. Owned by the PieceStore; `pins` keeps it from eviction."""

    __slots__ = (
        "_file",
        "arrived",
        "checked",
        "digest",
        "layout",
        "origin",
        "origins",
        "path",
        "piece_sha256",
        "pins",
        "proven",
        "public",
        "removed",
        "size",
        "staged",
        "verified",
        "vouchers",
        "writing",
    )

    def __init__(
        self,
        digest: Digest,
        layout: PieceLayout,
        path: Path,
        pieces: dict[int, bytes],
        *,
        origin: str,
        verified: bool = False,
        origins: frozenset[str] = frozenset(),
        public: bool = False,
        vouchers: frozenset[str] = frozenset(),
    ) -> None:
        self.digest = digest
        # Provenance, fixed when the blob is created: the registry whose word the bytes are
        # until the blob is verified. Only that registry's bytes ever fill it.
        self.origin = origin
        # Registries known to hold the blob: the provenance, and any that proved it since.
        self.origins = {origin, *origins}
        self.public = public  # one of `origins` served it to an anonymous caller
        self.size = layout.size
        self.layout = layout
        # Registries whose own image metadata gave the chunk map `layout` follows: pieces made
        # of chunks that match it serve their clients too (see Engine).
        self.vouchers = set(vouchers)
        # Pieces made of chunks whose digests matched since this process opened the blob
        # (what is on disk is checked again after a restart, before it is served).
        self.proven: set[int] = set()
        self.path = path
        self.piece_sha256 = pieces
        # Pieces written to the data file from sources whose bytes prove nothing piece by
        # piece (Dragonfly parents): not present, never served, never indexed, until the
        # whole blob matched its digest (then they become present; a restart forgets them).
        self.staged: dict[int, bytes] = {}
        self.verified = verified  # every byte was checked against the digest as a whole
        self.removed = False  # purged or evicted; the handle must not be used any more
        # Set once the whole blob was checked against its digest (either way) or removed.
        self.checked = asyncio.Event()
        if verified:
            self.checked.set()
        self.pins = 0
        # Bytes of the blob that reached this process from the origin or peers, counted as
        # they arrive: peers waiting for this node's fetches watch it move.
        self.arrived = 0
        # Held by the worker thread writing a piece into the data file: one at a time. The
        # kernel takes the file's lock for each buffered write anyway, and threads waiting for
        # it there spin on the CPU (4 writers of one file burned 1.8x the CPU of 1 here).
        self.writing = threading.Lock()
        self._file: IO[bytes] | None = None

    @property
    def piece_count(self) -> int:
        return self.layout.count

    def has(self, index: int) -> bool:
        return index in self.piece_sha256

    @property
    def complete(self) -> bool:
        return len(self.piece_sha256) == self.piece_count

    @property
    def covered(self) -> bool:
        """Every piece is present or staged: the whole blob can be checked."""
        return len(self.piece_sha256.keys() | self.staged.keys()) == self.piece_count

    @property
    def file(self) -> IO[bytes]:
        if self._file is None or self.removed:
            raise BlobRemoved(f"{self.digest} was removed from the cache")
        return self._file

    @contextlib.contextmanager
    def pinned(self) -> Iterator[StoredBlob]:
        self.pins += 1
        try:
            yield self
        finally:
            self.pins -= 1
            if self.removed and not self.pins:
                self._close()

    def _close(self) -> None:
        """Close the data file; while anyone holds a pin it stays open, so a descriptor that a
        sendfile is using is never closed (and reused for another file) under it."""
        if self._file is not None:
            self._file.close()
            self._file = None


class PieceStore:
    def __init__(self, config: StorageConfig, metrics: Metrics) -> None:
        self._root = Path(config.dir)
        self._quota = config.quota
        self.piece_size = int(config.piece_size)
        self._metrics = metrics
        self.index = Index(self._root / "index.sqlite")
        self._blobs: dict[str, StoredBlob] = {}
        self._accessed: dict[str, float] = {}
        self._last_flush = time.monotonic()
        self._high_water = int(config.quota * config.high_watermark)
        self._stored_bytes = 0
        self._stored_pieces = 0
        self._stored_blobs = 0
        # Set when the cache grows past the high watermark; the GC waits on it.
        self.over_high_water = asyncio.Event()
        self._tasks = TaskOwner("store")
        self._locks = KeyedLocks()  # open, create and delete of one blob never interleave
        # Two writes of one piece never interleave: bytes nothing proves yet (staged) must not
        # land over a piece's proven bytes after they were recorded.
        self._piece_writes = KeyedLocks()
        self._lock_fd: int | None = None
        self._verifying: set[str] = set()
        # Called when a blob becomes verified, or a verified blob gains an origin: its pieces
        # are then good for every client of those origins (the swarm announces them so), and
        # its bytes are proven (a nydus bootstrap among them gives chunk maps).
        self.trust_listeners: list[Callable[[StoredBlob], None]] = []

    # lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> PieceStore:
        await asyncio.to_thread(self._prepare_dirs)
        try:
            await self.index.open()
        except BaseException:
            self._release_lock()
            raise
        await self._recount()
        self._metrics.cache_quota_bytes.set(self._quota)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._tasks.aclose()
            accessed, self._accessed = self._accessed, {}
            await self._flush(accessed)
        finally:
            for blob in self._blobs.values():
                blob._close()
            self._blobs.clear()
            try:
                await self.index.close()
            finally:
                self._release_lock()

    def _prepare_dirs(self) -> None:
        self._root.mkdir(DIR_MODE, parents=True, exist_ok=True)
        self._lock_fd = os.open(self._root / "lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._lock_fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._lock_fd)
            self._lock_fd = None
            raise StartupError(
                f"storage.dir {self._root} is in use by another dfagent (pid {holder})"
            ) from None
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n".encode(), 0)
        tightened = make_private(self._root, "blobs")
        if tightened:
            shown = ", ".join(tightened[:5])
            more = f" and {len(tightened) - 5} more" if len(tightened) > 5 else ""
            log.warning(
                "the cache was readable by other users; made it owner-only",
                extra={"dir": str(self._root), "count": len(tightened), "paths": shown + more},
            )
        (self._root / "blobs").mkdir(DIR_MODE, exist_ok=True)
        tmp = self._root / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(DIR_MODE)

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor releases the flock
            self._lock_fd = None

    @property
    def root(self) -> Path:
        return self._root

    @property
    def quota(self) -> int:
        return int(self._quota)

    @property
    def stored_bytes(self) -> int:
        return self._stored_bytes

    @property
    def stored_pieces(self) -> int:
        return self._stored_pieces

    def loaded(self, digest_hex: str) -> StoredBlob | None:
        """The blob's handle if it is open in memory (no I/O)."""
        return self._blobs.get(digest_hex)

    def writable(self) -> bool:
        """A cheap readiness probe: the data directory accepts new files."""
        return os.access(self._root / "tmp", os.W_OK)

    # blob handles ------------------------------------------------------------------------

    async def open_blob(self, digest: Digest) -> StoredBlob | None:
        """The stored blob with this digest, or None when this node knows nothing of it."""
        blob = self._blobs.get(digest.hex)
        if blob is not None:
            return blob
        async with self._locks.hold(digest.hex):
            return await self._load(digest)

    async def create_blob(
        self,
        digest: Digest,
        size: int,
        origin: str,
        *,
        public: bool = False,
        chunk_map: ChunkMap | None = None,
        vouchers: frozenset[str] = frozenset(),
    ) -> StoredBlob:
        """Register a blob of `size` bytes (first sight, from `origin`; `public` when the origin
        answered an anonymous caller) with a sparse data file of that size, cut along the
        chunks of `chunk_map` (vouched for by `vouchers`) when one is known. A blob already
        known keeps its provenance and layout."""
        blob = self._blobs.get(digest.hex)
        if blob is not None:
            return blob
        async with self._locks.hold(digest.hex):
            blob = await self._load(digest)
            if blob is not None:
                return blob
            if chunk_map is not None and await self.index.get_chunk_map(digest.hex) is None:
                chunk_map = None  # contested since it was looked up: fixed pieces, no vouchers
            path = self.blob_path(digest.hex)

            def make() -> IO[bytes]:
                path.parent.mkdir(DIR_MODE, exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
                try:
                    os.ftruncate(fd, size)  # EFBIG past the file system's largest file
                except OSError:
                    os.close(fd)
                    path.unlink(missing_ok=True)
                    raise
                return open(fd, "r+b", buffering=0)

            layout = await asyncio.to_thread(self.layout, size, chunk_map)  # maybe a big map
            file = await asyncio.to_thread(make)
            await self.index.put_blob(
                digest.hex, size, self.piece_size, origin, public, layout=layout.key
            )
            self._stored_blobs += 1
            self._publish_usage()
            if not isinstance(layout, ChunkLayout):
                vouchers = frozenset()
            blob = StoredBlob(
                digest, layout, path, {}, origin=origin, public=public, vouchers=vouchers
            )
            return self._adopt(blob, file)

    def layout(self, size: int, chunk_map: ChunkMap | None) -> PieceLayout:
        """How a blob of `size` bytes is cut: along the chunks of `chunk_map` when it fits."""
        if chunk_map is not None:
            try:
                return ChunkLayout(size, self.piece_size, chunk_map)
            except NydusFormatError as exc:
                log.warning(
                    "chunk map does not fit the blob; cutting it into fixed pieces",
                    extra={"digest": f"sha256:{chunk_map.blob_id}", "error": str(exc)},
                )
        return FixedLayout(size, self.piece_size)

    async def _load(self, digest: Digest) -> StoredBlob | None:
        """open_blob's slow path, with the blob's lock held."""
        blob = self._blobs.get(digest.hex)
        if blob is not None:
            return blob
        row = await self.index.get_blob(digest.hex)
        if row is None:
            return None
        layout: PieceLayout = FixedLayout(row.size, row.piece_size)
        vouchers: frozenset[str] = frozenset()
        if row.layout not in ("", layout.key):  # "": written before layouts were recorded
            known = await self.index.get_chunk_map(digest.hex)
            if known is not None:
                packed, size = known[0], row.size

                def cut() -> PieceLayout:  # seconds for a large map: not on the event loop
                    return self.layout(size, ChunkMap.from_bytes(packed))

                try:
                    layout, vouchers = await asyncio.to_thread(cut), known[1]
                except NydusFormatError as exc:
                    log.warning(
                        "stored chunk map unreadable",
                        extra={"digest": str(digest), "error": str(exc)},
                    )
            if layout.key != row.layout:
                log.warning(
                    "the chunk map an indexed blob was cut by is gone; forgetting the blob",
                    extra={"digest": str(digest)},
                )
                await self._drop(digest.hex)
                return None
        path = self.blob_path(digest.hex)
        try:
            file = await asyncio.to_thread(open, path, "r+b", buffering=0)
        except FileNotFoundError:
            log.warning(
                "data file of an indexed blob is gone; forgetting it", extra={"digest": str(digest)}
            )
            await self._drop(digest.hex)
            return None
        return self._adopt(
            StoredBlob(
                digest,
                layout,
                path,
                row.pieces,
                origin=row.origin,
                verified=row.verified,
                origins=row.origins,
                public=row.public,
                vouchers=vouchers,
            ),
            file,
        )

    def _adopt(self, blob: StoredBlob, file: IO[bytes]) -> StoredBlob:
        blob._file = file
        self._blobs[blob.digest.hex] = blob
        return blob

    def touch(self, blob: StoredBlob) -> None:
        """Note a read of `blob` for LRU; flushed to the index in batches."""
        now = time.time()
        self._accessed[blob.digest.hex] = now
        if time.monotonic() - self._last_flush > _TOUCH_FLUSH_SECONDS:
            self._last_flush = time.monotonic()
            accessed, self._accessed = self._accessed, {}
            self._tasks.spawn(self._flush(accessed), name="flush-access")

    async def _flush(self, accessed: dict[str, float]) -> None:
        """Best effort: a lost access time only makes a blob look older to eviction."""
        try:
            await self.index.touch(accessed)
        except (DfagentError, sqlite3.Error) as exc:
            log.warning("could not record blob access times", extra={"error": str(exc)})

    # pieces ------------------------------------------------------------------------------

    async def piece_finished(
        self, blob: StoredBlob, index: int, data: bytes | bytearray, sha256: bytes | None = None
    ) -> bytes:
        """Write a whole piece at its offset, then record it present with its sha256 (hashed
        on the way to disk when not given); returns the sha256.

        Raises StorageFull when the disk is full; the piece then stays absent.
        """
        async with self._piece_writes.hold(f"{blob.digest.hex}:{index}"):
            sha256 = await self._write_piece(blob, index, data, sha256)
            async with self._locks.hold(blob.digest.hex):
                if blob.removed:  # purged while the bytes were on their way to disk
                    return sha256
                try:
                    await self.index.add_piece(blob.digest.hex, index, len(data), sha256)
                except (OSError, StorageFull) as exc:
                    raise self._write_failed(index, exc) from exc
                blob.staged.pop(index, None)  # these bytes replaced any staged ones
                self._present(blob, index, sha256, len(data))
        self._verify_when_covered(blob)
        return sha256

    async def piece_staged(
        self, blob: StoredBlob, index: int, data: bytes | bytearray, sha256: bytes | None = None
    ) -> None:
        """Write a whole piece whose bytes nothing proves yet (see StoredBlob.staged); it
        becomes present only once the whole blob matched its digest (hashed on the way to disk
        when `sha256` is not given). Raises StorageFull."""
        async with self._piece_writes.hold(f"{blob.digest.hex}:{index}"):
            if blob.has(index) or blob.removed:
                return
            sha256 = await self._write_piece(blob, index, data, sha256)
            if blob.removed:
                return
            blob.staged[index] = sha256
        self._verify_when_covered(blob)

    async def _write_piece(
        self, blob: StoredBlob, index: int, data: bytes | bytearray, sha256: bytes | None
    ) -> bytes:
        """Write piece `index` in one trip to a worker thread that also hashes it (unless
        its `sha256` is given); returns the sha256."""
        start, end = blob.layout.bounds(index)
        if len(data) != end - start:
            raise ValueError(f"piece {index} has {len(data)} bytes, expected {end - start}")
        write = self._tasks.spawn(
            asyncio.to_thread(
                _hash_and_write, blob.file.fileno(), blob.writing, data, start, sha256
            ),
            name="write-piece",
        )
        try:
            return await asyncio.shield(write)
        except OSError as exc:
            raise self._write_failed(index, exc) from exc
        except asyncio.CancelledError:
            # The thread writes on: the caller keeps the piece's write lock until it is done,
            # or a later write of the piece could land before it.
            await asyncio.wait([write])
            raise

    def _write_failed(self, index: int, exc: OSError | StorageFull) -> Exception:
        if isinstance(exc, StorageFull) or exc.errno in (errno.ENOSPC, errno.EDQUOT):
            self._metrics.storage_full.inc()
            return StorageFull(f"no space left to store piece {index}")
        self._metrics.storage_write_errors.inc()
        return exc

    def _present(self, blob: StoredBlob, index: int, sha256: bytes, length: int) -> None:
        if index not in blob.piece_sha256:
            self._stored_bytes += length
            self._stored_pieces += 1
        blob.piece_sha256[index] = sha256
        self._publish_usage()

    def _verify_when_covered(self, blob: StoredBlob) -> None:
        if blob.covered and not blob.verified and blob.digest.hex not in self._verifying:
            self._verifying.add(blob.digest.hex)
            self._tasks.spawn(self._verify(blob), name="verify-blob")

    async def _verify(self, blob: StoredBlob) -> None:
        try:
            with blob.pinned():
                staged = bool(blob.staged)
                ok = await self.verify_blob(blob)
            if not ok and staged:
                # The unproven bytes are the suspects: forget them (they are fetched again),
                # keep what its origin gave, and check the blob again once it is whole.
                extra = {"digest": str(blob.digest), "pieces": len(blob.staged)}
                log.warning("blob does not match its digest; its staged pieces are dropped",
                            extra=extra)  # fmt: skip
                blob.staged = {}
                blob.checked = asyncio.Event()
            elif not ok:
                await self.purge(blob, "its bytes do not match its digest")
        except BlobRemoved:
            pass
        finally:
            self._verifying.discard(blob.digest.hex)

    async def verify_blob(self, blob: StoredBlob) -> bool:
        """Hash the whole blob file against its digest; mark it verified when it matches.
        Raises BlobRemoved when the blob was forgotten meanwhile."""
        started = time.monotonic()
        actual = await asyncio.to_thread(sha256_of_file, blob.file.fileno(), 0, blob.size)
        self._metrics.blob_verify_seconds.observe(time.monotonic() - started)
        if actual.hex() != blob.digest.hex:
            self._metrics.blob_verify_failures.inc()
            blob.checked.set()
            return False
        # Proven now, with the whole blob: present at once (no piece may be claimed, fetched
        # and written again while the index records them), then recorded. Under the blob's
        # lock: a proven copy of a staged piece being recorded meanwhile (piece_finished) is
        # not recorded over with the staged copy's sha256, and a blob forgotten meanwhile gets
        # no rows again.
        async with self._locks.hold(blob.digest.hex):
            if blob.removed:
                raise BlobRemoved(f"{blob.digest} was removed while it was checked")
            staged, blob.staged = sorted(blob.staged.items()), {}
            for index, sha256 in staged:
                start, end = blob.layout.bounds(index)
                self._present(blob, index, sha256, end - start)
            for index, sha256 in staged:
                start, end = blob.layout.bounds(index)
                await self.index.add_piece(blob.digest.hex, index, end - start, sha256)
            await self.index.set_verified(blob.digest.hex, True)
            blob.verified = True
        for listener in self.trust_listeners:
            listener(blob)
        blob.checked.set()
        return True

    async def add_origin(self, blob: StoredBlob, origin: str, *, public: bool) -> None:
        """Record that `origin` holds the blob (it sent its bytes, or proved it holds them),
        and, with `public`, that it served them to an anonymous caller."""
        if origin in blob.origins and (blob.public or not public):
            return
        added = origin not in blob.origins
        blob.origins.add(origin)
        blob.public = blob.public or public
        await self.index.set_origins(blob.digest.hex, blob.origins - {blob.origin}, blob.public)
        if added and blob.verified:
            for listener in self.trust_listeners:
                listener(blob)

    async def purge(self, blob: StoredBlob, reason: str) -> None:
        """Remove a blob whose bytes cannot be trusted, here (and, later, in the swarm)."""
        log.error("purging blob", extra={"digest": str(blob.digest), "reason": reason})
        await self.forget(blob.digest.hex)

    async def drop_piece(self, digest_hex: str, index: int, length: int) -> None:
        """Forget one stored piece (its bytes failed a check); it will be fetched again."""
        async with self._locks.hold(digest_hex):
            if not await self.index.delete_piece(digest_hex, index):
                return  # someone dropped it already
            await self.index.set_verified(digest_hex, False)
            blob = self._blobs.get(digest_hex)
            if blob is not None:
                blob.piece_sha256.pop(index, None)
                blob.proven.discard(index)
                blob.verified = False
            self._stored_bytes -= length
            self._stored_pieces -= 1
            self._publish_usage()

    def blob_path(self, digest_hex: str) -> Path:
        return self._root / "blobs" / digest_hex[:2] / digest_hex

    async def flush_access_times(self) -> None:
        if self._accessed:
            accessed, self._accessed = self._accessed, {}
            await self.index.touch(accessed)

    # removal -------------------------------------------------------------------------------

    async def evict(self, digest_hex: str) -> bool:
        """forget the blob unless someone is reading or writing it; True when it went."""
        async with self._locks.hold(digest_hex):
            blob = self._blobs.get(digest_hex)
            if blob is not None and blob.pins:
                return False
            await self._drop(digest_hex)
            return True

    async def recut(self, digest_hex: str) -> bool:
        """Forget an unverified blob cut into fixed pieces, unless someone is using it: a chunk
        map for it was just learned, and cut along its chunks on its next read its pieces can
        be proven one by one. True when it went."""
        row = await self.index.get_blob(digest_hex)
        if row is None or row.verified or row.layout.startswith("chunks:"):
            return False
        return await self.evict(digest_hex)

    async def contest_chunk_map(self, digest_hex: str, *, refuted: bool = False) -> bool:
        """The blob's chunk map is in doubt: mark the blob contested in the index and forget a
        copy cut along the map, even while it is read (a stored piece's reads are cut off).
        Unless the map was `refuted` (the blob proven whole contradicts it), a copy cut along
        the map and verified whole here keeps it: every chunk of that copy matched the blob
        the digest proves. True when the blob was contested."""
        async with self._locks.hold(digest_hex):
            loaded = self._blobs.get(digest_hex)
            row = await self.index.get_blob(digest_hex)
            along_chunks = row is not None and row.layout.startswith("chunks:")
            verified = loaded.verified if loaded is not None else row is not None and row.verified
            if along_chunks and verified and not refuted:
                return False
            await self.index.contest_chunk_map(digest_hex)
            if along_chunks:
                log.info(
                    "forgetting a blob cut along a contested chunk map",
                    extra={"digest": f"sha256:{digest_hex}"},
                )
                await self._drop(digest_hex)
            return True

    async def forget(self, digest_hex: str) -> None:
        """Delete a blob's index rows and data file."""
        async with self._locks.hold(digest_hex):
            await self._drop(digest_hex)

    async def _drop(self, digest_hex: str) -> None:
        """forget, with the blob's lock held. Rows go first: a crash in between leaves a data
        file without rows, which nothing reads, never rows without their bytes."""
        blob = self._blobs.pop(digest_hex, None)
        if blob is not None:
            blob.removed = True
            blob.checked.set()
            if not blob.pins:
                blob._close()
        stored, pieces = await self.index.delete_blob(digest_hex)
        await asyncio.to_thread(self.blob_path(digest_hex).unlink, missing_ok=True)
        self._stored_bytes -= stored
        self._stored_pieces -= pieces
        self._stored_blobs -= 1
        self._publish_usage()

    async def _recount(self) -> None:
        usage = await self.index.usage()
        self._stored_bytes, self._stored_pieces, self._stored_blobs = usage
        self._publish_usage()

    def _publish_usage(self) -> None:
        self._metrics.cache_bytes.set(self._stored_bytes)
        self._metrics.cache_pieces.set(self._stored_pieces)
        self._metrics.cache_blobs.set(self._stored_blobs)
        if self._stored_bytes > self._high_water:
            self.over_high_water.set()


def _hash_and_write(
    fd: int, writing: threading.Lock, data: bytes | bytearray, offset: int, sha256: bytes | None
) -> bytes:
    if sha256 is None:
        sha256 = sha256_of(data)
    with writing:
        _pwrite_all(fd, data, offset)
    return sha256


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
