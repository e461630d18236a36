"""The piece index: which blobs and pieces are stored, with each piece's sha256.

Each blob also records its provenance (`origin`: the registry whose word its bytes are until
the blob is verified), the other registries that proved they hold it (`origins`), and whether
one of them served it to an anonymous caller (`public`).

`chunk_maps` holds the packed chunk map (ChunkMap.to_bytes) of nydus data blobs, learned from
verified bootstrap layers, with the registries whose layers vouch for it (`vouchers`). A map
outlives its blob's pieces: it is pruned by age, never while its blob is stored. A row with an
empty map marks a *contested* blob: bootstraps described it in two ways and nothing proved
either, so no map is used for it (and none is learned for it while the row lasts).

sqlite3 in WAL mode on one dedicated thread; every call is `await index.<method>(...)`.
A row in `pieces` means the piece's bytes are on disk: rows are written only after the bytes
(write first, then publish), so a crash can lose a piece but never mark wrong bytes present.
"""

from __future__ import annotations

import asyncio
import enum
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from dfagent.errors import StartupError, StorageFull
from dfagent.storage.private import FILE_MODE

__all__ = ["BlobRow", "BlobSummary", "Index", "MapRecord", "PieceRow"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (
    digest TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    piece_size INTEGER NOT NULL,
    created REAL NOT NULL,
    last_access REAL NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL DEFAULT '',
    origins TEXT NOT NULL DEFAULT '',
    public INTEGER NOT NULL DEFAULT 0,
    layout TEXT NOT NULL DEFAULT ''
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
CREATE TABLE IF NOT EXISTS chunk_maps (
    digest TEXT PRIMARY KEY,
    packed BLOB NOT NULL,
    vouchers TEXT NOT NULL DEFAULT '',
    learned REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS chunk_maps_by_learned ON chunk_maps(learned);
"""


_SCHEMA_VERSION = 4


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an index written by an older dfagent to the current schema."""
    columns = {row[1] for row in db.execute("PRAGMA table_info(blobs)")}
    if "verified" not in columns:  # before version 1
        db.execute("ALTER TABLE blobs ADD COLUMN verified INTEGER NOT NULL DEFAULT 0")
    if "origin" not in columns:  # before version 2
        db.execute("ALTER TABLE blobs ADD COLUMN origin TEXT NOT NULL DEFAULT ''")
    if "origins" not in columns:  # before version 3
        db.execute("ALTER TABLE blobs ADD COLUMN origins TEXT NOT NULL DEFAULT ''")
        db.execute("ALTER TABLE blobs ADD COLUMN public INTEGER NOT NULL DEFAULT 0")
    if "layout" not in columns:  # before version 4
        db.execute("ALTER TABLE blobs ADD COLUMN layout TEXT NOT NULL DEFAULT ''")
    # Version 4 also added the chunk_maps table: _SCHEMA creates it in an older index.


@dataclass(frozen=True, slots=True)
class BlobRow:
    digest: str
    size: int
    piece_size: int
    last_access: float
    verified: bool
    origin: str
    origins: frozenset[str]  # registries that proved they hold the blob, `origin` among them
    public: bool
    pieces: dict[int, bytes]  # piece index -> sha256 of its bytes
    layout: str  # the key of how the blob is cut into pieces ("" when written before keys)


@dataclass(frozen=True, slots=True)
class BlobSummary:
    digest: str
    size: int
    stored: int  # bytes of the pieces present
    pieces: int
    last_access: float
    verified: bool
    chunk_mapped: bool  # cut along the chunks of a nydus chunk map


class MapRecord(enum.Enum):
    """What recording a chunk map did."""

    NEW = "new"  # the blob's first map
    SAME = "same"  # that map was recorded already (its vouchers joined)
    CONFLICT = "conflict"  # another map is recorded; it stays (see Index.contest_chunk_map)
    CONTESTED = "contested"  # the blob is contested: no map is recorded for it


@dataclass(frozen=True, slots=True)
class PieceRow:
    digest: str
    index: int
    length: int
    sha256: bytes
    piece_size: int
    blob_size: int
    verified: bool
    origin: str
    origins: str  # space-separated, as stored
    layout: str  # as BlobRow.layout, never ""


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
        try:
            await loop.run_in_executor(self._executor, self._open)
        except sqlite3.Error as exc:
            raise StartupError(f"cannot open the index {self._path}: {exc}") from exc

    def _open(self) -> None:
        # Created owner-only before sqlite opens it: its -wal and -shm files take its mode.
        os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, FILE_MODE))
        db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA foreign_keys=ON")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            db.executescript(_SCHEMA)
            if version < _SCHEMA_VERSION:
                _migrate(db)
                db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
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
                "SELECT size, piece_size, last_access, verified, origin, origins, public, "
                "layout FROM blobs WHERE digest = ?",
                (digest,),
            ).fetchone()
            if row is None:
                return None
            pieces = dict(db.execute("SELECT idx, sha256 FROM pieces WHERE digest = ?", (digest,)))
            origins = frozenset({row[4], *row[5].split()})
            return BlobRow(
                digest,
                row[0],
                row[1],
                row[2],
                bool(row[3]),
                row[4],
                origins,
                bool(row[6]),
                pieces,
                row[7],
            )

        return await self.run(query)

    async def put_blob(
        self,
        digest: str,
        size: int,
        piece_size: int,
        origin: str,
        public: bool = False,
        *,
        layout: str,
    ) -> None:
        now = time.time()
        await self.run(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO blobs (digest, size, piece_size, created, last_access, "
                "origin, public, layout) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (digest, size, piece_size, now, now, origin, int(public), layout),
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

    async def set_verified(self, digest: str, verified: bool) -> None:
        await self.run(
            lambda db: db.execute(
                "UPDATE blobs SET verified = ? WHERE digest = ?", (int(verified), digest)
            )
        )

    async def set_origins(self, digest: str, origins: Iterable[str], public: bool) -> None:
        """Record the registries besides the provenance that hold the blob, and whether it is
        public."""
        joined = " ".join(sorted(origins))
        await self.run(
            lambda db: db.execute(
                "UPDATE blobs SET origins = ?, public = ? WHERE digest = ?",
                (joined, int(public), digest),
            )
        )

    async def delete_piece(self, digest: str, index: int) -> bool:
        """True when the piece was there to delete."""
        cursor = await self.run(
            lambda db: db.execute(
                "DELETE FROM pieces WHERE digest = ? AND idx = ?", (digest, index)
            )
        )
        return cursor.rowcount > 0

    async def pieces_after(self, digest: str, index: int, limit: int) -> list[PieceRow]:
        """Up to `limit` stored pieces after (digest, index) in key order: a resumable walk."""
        rows = await self.run(
            lambda db: db.execute(
                "SELECT p.digest, p.idx, p.length, p.sha256, b.piece_size, b.size, b.verified, "
                "b.origin, b.origins, b.layout FROM pieces p "
                "JOIN blobs b ON b.digest = p.digest WHERE (p.digest, p.idx) > (?, ?) "
                "ORDER BY p.digest, p.idx LIMIT ?",
                (digest, index, limit),
            ).fetchall()
        )
        return [
            PieceRow(*row[:6], bool(row[6]), row[7], row[8], row[9] or f"fixed:{row[4]}")
            for row in rows
        ]

    async def blobs(self) -> list[BlobSummary]:
        """Every blob with what is stored of it."""
        rows = await self.run(
            lambda db: db.execute(
                "SELECT b.digest, b.size, COALESCE(SUM(p.length), 0), COUNT(p.idx), "
                "b.last_access, b.verified, b.layout LIKE 'chunks:%' FROM blobs b "
                "LEFT JOIN pieces p ON p.digest = b.digest GROUP BY b.digest"
            ).fetchall()
        )
        return [BlobSummary(r[0], r[1], r[2], r[3], r[4], bool(r[5]), bool(r[6])) for r in rows]

    async def accessed_before(self, cutoff: float, limit: int) -> list[str]:
        return [
            row[0]
            for row in await self.run(
                lambda db: db.execute(
                    "SELECT digest FROM blobs WHERE last_access < ? ORDER BY last_access LIMIT ?",
                    (cutoff, limit),
                ).fetchall()
            )
        ]

    async def delete_blob(self, digest: str) -> tuple[int, int]:
        """Delete a blob and its pieces; returns the (bytes, pieces) that were recorded."""

        def delete(db: sqlite3.Connection) -> tuple[int, int]:
            with db:
                stored, pieces = db.execute(
                    "SELECT COALESCE(SUM(length), 0), COUNT(*) FROM pieces WHERE digest = ?",
                    (digest,),
                ).fetchone()
                db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
            return int(stored), int(pieces)

        return await self.run(delete)

    async def usage(self) -> tuple[int, int, int]:
        """(bytes, pieces, blobs) held, summed over the index."""

        def query(db: sqlite3.Connection) -> tuple[int, int, int]:
            stored, pieces = db.execute(
                "SELECT COALESCE(SUM(length), 0), COUNT(*) FROM pieces"
            ).fetchone()
            (blobs,) = db.execute("SELECT COUNT(*) FROM blobs").fetchone()
            return int(stored), int(pieces), int(blobs)

        return await self.run(query)

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

    async def put_chunk_map(
        self, digest: str, packed: bytes, vouchers: frozenset[str]
    ) -> MapRecord:
        """Record blob `digest`'s packed chunk map and the registries vouching for it. When the
        same map is already recorded, its vouchers are joined and it counts as learned now;
        a different map recorded, or a contested blob, is left as it is."""
        if not packed:
            raise ValueError("an empty chunk map marks a contested blob; it is no map")
        for voucher in vouchers:
            if not voucher or any(character.isspace() for character in voucher):
                raise ValueError(f"voucher {voucher!r} is empty or holds white space")
        now = time.time()

        def put(db: sqlite3.Connection) -> MapRecord:
            with db:
                row = db.execute(
                    "SELECT packed, vouchers FROM chunk_maps WHERE digest = ?", (digest,)
                ).fetchone()
                if row is None:
                    db.execute(
                        "INSERT INTO chunk_maps (digest, packed, vouchers, learned) "
                        "VALUES (?, ?, ?, ?)",
                        (digest, packed, " ".join(sorted(vouchers)), now),
                    )
                    return MapRecord.NEW
                if not row[0]:  # still contested: the mark counts as learned now
                    db.execute("UPDATE chunk_maps SET learned = ? WHERE digest = ?", (now, digest))
                    return MapRecord.CONTESTED
                if row[0] != packed:
                    return MapRecord.CONFLICT
                joined = " ".join(sorted(vouchers | set(row[1].split())))
                db.execute(
                    "UPDATE chunk_maps SET vouchers = ?, learned = ? WHERE digest = ?",
                    (joined, now, digest),
                )
                return MapRecord.SAME

        return await self.run(put)

    async def contest_chunk_map(self, digest: str) -> None:
        """Mark blob `digest` contested: its map, if any, goes, and no map is recorded for it
        (put_chunk_map) until the mark is pruned like a map."""
        await self.run(
            lambda db: db.execute(
                "INSERT INTO chunk_maps (digest, packed, vouchers, learned) VALUES (?, ?, '', ?) "
                "ON CONFLICT (digest) DO UPDATE SET packed = excluded.packed, vouchers = '', "
                "learned = excluded.learned",
                (digest, b"", time.time()),
            )
        )

    async def get_chunk_map(self, digest: str) -> tuple[bytes, frozenset[str]] | None:
        """(packed map, vouchers) of blob `digest`, or None (none known, or contested)."""
        row = await self.run(
            lambda db: db.execute(
                "SELECT packed, vouchers FROM chunk_maps WHERE digest = ?", (digest,)
            ).fetchone()
        )
        return None if row is None or not row[0] else (row[0], frozenset(row[1].split()))

    async def prune_chunk_maps(self, keep: int) -> int:
        """Delete the maps beyond the `keep` most recently learned, except those whose blob is
        stored; returns how many were deleted."""
        if keep < 0:
            raise ValueError(f"keep must not be negative, got {keep}")
        cursor = await self.run(
            lambda db: db.execute(
                "DELETE FROM chunk_maps WHERE digest IN ("
                "SELECT digest FROM chunk_maps ORDER BY learned DESC, digest "
                "LIMIT -1 OFFSET ?) "
                "AND NOT EXISTS (SELECT 1 FROM blobs b WHERE b.digest = chunk_maps.digest)",
                (keep,),
            )
        )
        return cursor.rowcount
