"""The piece index: which blobs and pieces are stored, with each piece's sha256.

sqlite3 in WAL mode on one dedicated thread; every call is `await index.<method>(...)`.
A row in `pieces` means the piece's bytes are on disk: rows are written only after the bytes
(write first, then publish), so a crash can lose a piece but never mark wrong bytes present.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dfagent.errors import StorageFull

__all__ = ["BlobRow", "Index"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    piece_size INTEGER NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pieces (
    digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    length INTEGER NOT NULL,
    sha256 BLOB NOT NULL,
    stored REAL NOT NULL,
    PRIMARY KEY (digest, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blobs_by_access ON blobs(last_access);
"""


@dataclass(frozen=True, slots=True)
class BlobRow:
    digest: str
    size: int
    piece_size: int
    last_access: float
    pieces: dict[int, bytes]  # piece index -> sha256 of its bytes


class Index:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfagent-index")
        self._db: sqlite3.Connection | None = None

    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` on the index thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        assert self._db is not None, "index is not open"
        try:
            return fn(self._db)
        except sqlite3.OperationalError as exc:
            if "full" in str(exc):  # "database or disk is full"
                raise StorageFull(f"index: {exc}") from exc
            raise

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._open)

    def _open(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.executescript(_SCHEMA)
        self._db = db

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._close)
        finally:
            self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def ping(self) -> None:
        await self.run(lambda db: db.execute("SELECT 1").fetchone())

    async def get_blob(self, digest: str) -> BlobRow | None:
        def query(db: sqlite3.Connection) -> BlobRow | None:
            row = db.execute(
                "SELECT size, piece_size, last_access FROM blobs WHERE digest = ?", (digest,)
            ).fetchone()
            if row is None:
                return None
            pieces = dict(db.execute("SELECT idx, sha256 FROM pieces WHERE digest = ?", (digest,)))
            return BlobRow(digest, row[0], row[1], row[2], pieces)

        return await self.run(query)

    async def put_blob(self, digest: str, size: int, piece_size: int) -> None:
        now = time.time()
        await self.run(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO blobs VALUES (?, ?, ?, ?, ?)",
                (digest, size, piece_size, now, now),
            )
        )

    async def add_piece(self, digest: str, index: int, length: int, sha256: bytes) -> None:
        now = time.time()
        await self.run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO pieces VALUES (?, ?, ?, ?, ?)",
                (digest, index, length, sha256, now),
            )
        )

    async def touch(self, accesses: dict[str, float]) -> None:
        """Record last-access times (batched by the caller: one write per flush, not per read)."""

        def update(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "UPDATE blobs SET last_access = ? WHERE digest = ?",
                    [(when, digest) for digest, when in accesses.items()],
                )

        await self.run(update)

    async def delete_blob(self, digest: str) -> None:
        await self.run(lambda db: db.execute("DELETE FROM blobs WHERE digest = ?", (digest,)))

    async def stored_bytes(self) -> tuple[int, int]:
        """(bytes, pieces) held, summed over the index."""
        row = await self.run(
            lambda db: db.execute(
                "SELECT COALESCE(SUM(length), 0), COUNT(*) FROM pieces"
            ).fetchone()
        )
        return int(row[0]), int(row[1])

    async def least_recent(self, limit: int) -> list[tuple[str, int]]:
        """(digest, stored bytes) of the least recently used blobs, oldest first."""
        return await self.run(
            lambda db: db.execute(
                "SELECT b.digest, COALESCE(SUM(p.length), 0) FROM blobs b "
                "LEFT JOIN pieces p ON p.digest = b.digest "
                "GROUP BY b.digest ORDER BY b.last_access LIMIT ?",
                (limit,),
            ).fetchall()
        )
