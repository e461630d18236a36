"""Blob data on disk: one sparse file per blob, pieces written at their offsets.

`PieceStore` owns the data directory and the index. It hands out `StoredBlob` handles that
say which pieces are present; a piece becomes present only after its bytes are written
(`piece_finished`). Reads of present pieces go through the blob's file (sendfile or `pread`);
nothing here copies a whole blob into memory. Blocking calls run in the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from dfagent.core.digest import Digest
from dfagent.core.pieces import piece_bounds, piece_count
from dfagent.errors import StorageFull
from dfagent.metrics import Metrics
from dfagent.storage.config import StorageConfig
from dfagent.storage.index import Index
from dfagent.tasks import KeyedLocks, TaskOwner

__all__ = ["PieceStore", "StoredBlob"]

log = logging.getLogger(__name__)

_LOW_WATER = 0.9  # after exceeding the quota, evict down to this fraction of it
_TOUCH_FLUSH_SECONDS = 5.0


class StoredBlob:
    """What this node holds of one blob. Owned by the PieceStore; `pins` keeps it from eviction."""

    __slots__ = ("_file", "digest", "path", "piece_sha256", "piece_size", "pins", "size")

    def __init__(
        self, digest: Digest, size: int, piece_size: int, path: Path, pieces: dict[int, bytes]
    ) -> None:
        self.digest = digest
        self.size = size
        self.piece_size = piece_size
        self.path = path
        self.piece_sha256 = pieces
        self.pins = 0
        self._file: IO[bytes] | None = None

    @property
    def piece_count(self) -> int:
        return piece_count(self.size, self.piece_size)

    def has(self, index: int) -> bool:
        return index in self.piece_sha256

    @property
    def complete(self) -> bool:
        return len(self.piece_sha256) == self.piece_count

    @property
    def file(self) -> IO[bytes]:
        assert self._file is not None, "blob file is not open"
        return self._file

    @contextlib.contextmanager
    def pinned(self) -> Iterator[StoredBlob]:
        self.pins += 1
        try:
            yield self
        finally:
            self.pins -= 1


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
        self._stored_bytes = 0
        self._stored_pieces = 0
        self._evicting = asyncio.Lock()
        self._tasks = TaskOwner("store")
        self._locks = KeyedLocks()  # open, create and delete of one blob never interleave

    # lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> PieceStore:
        await asyncio.to_thread(self._prepare_dirs)
        await self.index.open()
        self._stored_bytes, self._stored_pieces = await self.index.stored_bytes()
        self._publish_usage()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        try:
            await self._tasks.aclose()
            if self._accessed:
                await self.index.touch(self._accessed)
        finally:
            for blob in self._blobs.values():
                if blob._file is not None:
                    blob._file.close()
            self._blobs.clear()
            await self.index.close()

    def _prepare_dirs(self) -> None:
        (self._root / "blobs").mkdir(parents=True, exist_ok=True)
        tmp = self._root / "tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()

    @property
    def stored_bytes(self) -> int:
        return self._stored_bytes

    def writable(self) -> bool:
        """A cheap readiness probe: the data directory accepts new files."""
        return os.access(self._root / "tmp", os.W_OK)

    # blob handles ------------------------------------------------------------------------

    def _path(self, digest: Digest) -> Path:
        return self._root / "blobs" / digest.hex[:2] / digest.hex

    async def open_blob(self, digest: Digest) -> StoredBlob | None:
        """The stored blob with this digest, or None when this node knows nothing of it."""
        blob = self._blobs.get(digest.hex)
        if blob is not None:
            return blob
        async with self._locks.hold(digest.hex):
            return await self._load(digest)

    async def create_blob(self, digest: Digest, size: int) -> StoredBlob:
        """Register a blob of `size` bytes (first sight) with a sparse data file of that size."""
        blob = self._blobs.get(digest.hex)
        if blob is not None:
            return blob
        async with self._locks.hold(digest.hex):
            blob = await self._load(digest)
            if blob is not None:
                return blob
            path = self._path(digest)

            def make() -> IO[bytes]:
                path.parent.mkdir(exist_ok=True)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                os.ftruncate(fd, size)
                return open(fd, "r+b", buffering=0)

            file = await asyncio.to_thread(make)
            await self.index.put_blob(digest.hex, size, self.piece_size)
            return self._adopt(StoredBlob(digest, size, self.piece_size, path, {}), file)

    async def _load(self, digest: Digest) -> StoredBlob | None:
        """open_blob's slow path, with the blob's lock held."""
        blob = self._blobs.get(digest.hex)
        if blob is not None:
            return blob
        row = await self.index.get_blob(digest.hex)
        if row is None:
            return None
        path = self._path(digest)
        try:
            file = await asyncio.to_thread(open, path, "r+b", buffering=0)
        except FileNotFoundError:
            log.warning(
                "data file of an indexed blob is gone; forgetting it", extra={"digest": str(digest)}
            )
            await self._drop(digest.hex, sum(self._lengths(row.size, row.piece_size, row.pieces)))
            return None
        return self._adopt(StoredBlob(digest, row.size, row.piece_size, path, row.pieces), file)

    def _adopt(self, blob: StoredBlob, file: IO[bytes]) -> StoredBlob:
        blob._file = file
        self._blobs[blob.digest.hex] = blob
        return blob

    @staticmethod
    def _lengths(size: int, piece_size: int, pieces: dict[int, bytes]) -> Iterator[int]:
        for index in pieces:
            start, end = piece_bounds(index, size, piece_size)
            yield end - start

    def touch(self, blob: StoredBlob) -> None:
        """Note a read of `blob` for LRU; flushed to the index in batches."""
        now = time.time()
        self._accessed[blob.digest.hex] = now
        if time.monotonic() - self._last_flush > _TOUCH_FLUSH_SECONDS:
            self._last_flush = time.monotonic()
            accessed, self._accessed = self._accessed, {}
            self._tasks.spawn(self._flush(accessed), name="flush-access")

    async def _flush(self, accessed: dict[str, float]) -> None:
        try:
            await self.index.touch(accessed)
        except Exception:
            log.exception("could not record blob access times")

    # pieces ------------------------------------------------------------------------------

    async def piece_finished(
        self, blob: StoredBlob, index: int, data: bytes | bytearray, sha256: bytes
    ) -> None:
        """Write a whole piece at its offset, then record it present with its sha256.

        Raises StorageFull when the disk is full; the piece then stays absent.
        """
        start, end = piece_bounds(index, blob.size, blob.piece_size)
        if len(data) != end - start:
            raise ValueError(f"piece {index} has {len(data)} bytes, expected {end - start}")
        try:
            await asyncio.to_thread(_pwrite_all, blob.file.fileno(), data, start)
        except OSError as exc:
            self._metrics.storage_write_errors.inc()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull(f"no space left to store piece {index}") from exc
            raise
        await self.index.add_piece(blob.digest.hex, index, len(data), sha256)
        if index not in blob.piece_sha256:
            self._stored_bytes += len(data)
            self._stored_pieces += 1
        blob.piece_sha256[index] = sha256
        self._publish_usage()

    async def read(self, blob: StoredBlob, offset: int, count: int) -> bytes:
        """Read stored bytes (for callers that cannot use sendfile)."""
        return await asyncio.to_thread(os.pread, blob.file.fileno(), count, offset)

    # quota -------------------------------------------------------------------------------

    def over_quota(self) -> bool:
        return self._stored_bytes > self._quota

    async def evict(self) -> int:
        """Evict least recently used, unpinned blobs until under the low-water mark."""
        evicted = 0
        async with self._evicting:
            if self._accessed:
                accessed, self._accessed = self._accessed, {}
                await self.index.touch(accessed)
            target = int(self._quota * _LOW_WATER)
            while self._stored_bytes > target:
                candidates = await self.index.least_recent(64)
                progress = False
                for digest_hex, stored in candidates:
                    blob = self._blobs.get(digest_hex)
                    if blob is not None and blob.pins:
                        continue
                    await self._forget(digest_hex, stored)
                    log.info("evicted", extra={"digest": f"sha256:{digest_hex}", "bytes": stored})
                    evicted += 1
                    progress = True
                    if self._stored_bytes <= target:
                        break
                if not progress:
                    break  # everything left is in use
        self._metrics.evicted_blobs.inc(evicted)
        return evicted

    async def _forget(self, digest_hex: str, stored: int) -> None:
        async with self._locks.hold(digest_hex):
            await self._drop(digest_hex, stored)

    async def _drop(self, digest_hex: str, stored: int) -> None:
        """Delete a blob's index rows and data file, with its lock held."""
        blob = self._blobs.pop(digest_hex, None)
        pieces = len(blob.piece_sha256) if blob is not None else None
        if blob is not None and blob._file is not None:
            blob._file.close()
        await self.index.delete_blob(digest_hex)
        path = self._root / "blobs" / digest_hex[:2] / digest_hex
        await asyncio.to_thread(path.unlink, missing_ok=True)
        self._stored_bytes -= stored
        if pieces is None:
            self._stored_bytes, self._stored_pieces = await self.index.stored_bytes()
        else:
            self._stored_pieces -= pieces
        self._publish_usage()

    def _publish_usage(self) -> None:
        self._metrics.cache_bytes.set(self._stored_bytes)
        self._metrics.cache_pieces.set(self._stored_pieces)


def _pwrite_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
