from __future__ import annotations

import hashlib
import sqlite3

import pytest

from dfagent.nydus import Chunk, ChunkMap, Compression, DigestAlgorithm
from dfagent.storage.index import Index, MapRecord

OLD_SCHEMA = """
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
    piece_size INTEGER NOT NULL, created REAL NOT NULL, last_access REAL NOT NULL);
CREATE TABLE pieces (digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
    idx INTEGER NOT NULL, length INTEGER NOT NULL, sha256 BLOB NOT NULL, stored REAL NOT NULL,
    PRIMARY KEY (digest, idx)) WITHOUT ROWID;
INSERT INTO blobs VALUES ('ab', 10, 4, 1.0, 2.0);
INSERT INTO pieces VALUES ('ab', 0, 4, x'00', 1.0);
"""


async def test_an_index_from_the_first_release_is_migrated(tmp_path):
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
    index = Index(path)
    await index.open()
    try:
        row = await index.get_blob("ab")
        assert row is not None
        assert (row.size, row.verified, row.origin, row.pieces) == (10, False, "", {0: b"\0"})
        assert (row.origins, row.public, row.layout) == (frozenset({""}), False, "")
        await index.set_origins("ab", ["https://b:443"], True)
        row = await index.get_blob("ab")
        assert (row.origins, row.public) == (frozenset({"", "https://b:443"}), True)
        await index.set_verified("ab", True)
        assert (await index.get_blob("ab")).verified
        assert await index.delete_blob("ab") == (4, 1)
        assert await index.usage() == (0, 0, 0)
    finally:
        await index.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)


VERSION_3_SCHEMA = """
CREATE TABLE blobs (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
    piece_size INTEGER NOT NULL, created REAL NOT NULL, last_access REAL NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0, origin TEXT NOT NULL DEFAULT '',
    origins TEXT NOT NULL DEFAULT '', public INTEGER NOT NULL DEFAULT 0);
CREATE TABLE pieces (digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
    idx INTEGER NOT NULL, length INTEGER NOT NULL, sha256 BLOB NOT NULL, stored REAL NOT NULL,
    PRIMARY KEY (digest, idx)) WITHOUT ROWID;
CREATE INDEX blobs_by_access ON blobs(last_access);
INSERT INTO blobs VALUES ('ab', 10, 4, 1.0, 2.0, 1, 'https://a:443', '', 0);
PRAGMA user_version = 3;
"""


def packed_map(blob_id: str, chunks: int = 3) -> bytes:
    """A real packed chunk map of `chunks` 100-byte chunks."""
    return ChunkMap(
        blob_id,
        tuple(
            Chunk(i, i * 100, 100, i * 4096, 100, Compression.NONE, DigestAlgorithm.SHA256,
                  hashlib.sha256(b"%d" % i).digest())
            for i in range(chunks)
        ),
    ).to_bytes()  # fmt: skip


@pytest.fixture
async def index(tmp_path):
    opened = Index(tmp_path / "index.sqlite")
    await opened.open()
    yield opened
    await opened.close()


async def test_an_index_of_version_3_is_migrated_to_hold_chunk_maps(tmp_path):
    path = tmp_path / "index.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(VERSION_3_SCHEMA)
    index = Index(path)
    await index.open()
    try:
        assert (await index.get_blob("ab")).origin == "https://a:443"
        assert await index.get_chunk_map("ab") is None
        recorded = await index.put_chunk_map("ab", packed_map("ab"), frozenset({"https://a:443"}))
        assert recorded is MapRecord.NEW
        assert await index.get_chunk_map("ab") == (packed_map("ab"), frozenset({"https://a:443"}))
    finally:
        await index.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)


async def test_a_chunk_map_gains_vouchers_but_is_never_replaced(index):
    packed = packed_map("cd")
    assert await index.put_chunk_map("cd", packed, frozenset({"https://a:443"})) is MapRecord.NEW
    stored, vouchers = await index.get_chunk_map("cd")
    assert ChunkMap.from_bytes(stored) == ChunkMap.from_bytes(packed)
    assert vouchers == frozenset({"https://a:443"})
    both = frozenset({"https://b:5000", "https://a:443"})
    assert await index.put_chunk_map("cd", packed, both) is MapRecord.SAME
    assert await index.get_chunk_map("cd") == (packed, both)
    other = packed_map("cd", 4)
    assert (
        await index.put_chunk_map("cd", other, frozenset({"https://c:443"})) is MapRecord.CONFLICT
    )
    assert await index.get_chunk_map("cd") == (packed, both)
    assert await index.put_chunk_map("ef", packed_map("ef"), frozenset()) is MapRecord.NEW
    assert await index.get_chunk_map("ef") == (packed_map("ef"), frozenset())
    assert await index.get_chunk_map("gh") is None
    for bad in ("", "two words", "tab\there"):
        with pytest.raises(ValueError, match="voucher"):
            await index.put_chunk_map("gh", packed, frozenset({bad}))
    with pytest.raises(ValueError, match="contested"):
        await index.put_chunk_map("gh", b"", frozenset())
    assert await index.get_chunk_map("gh") is None


async def test_a_contested_blob_has_no_chunk_map_and_learns_none(index):
    packed = packed_map("cd")
    await index.put_chunk_map("cd", packed, frozenset({"https://a:443"}))
    await index.contest_chunk_map("cd")
    await index.contest_chunk_map("ef")  # a blob no map was known for
    for digest in ("cd", "ef"):
        assert await index.get_chunk_map(digest) is None
        for candidate in (packed, packed_map(digest, 4)):
            recorded = await index.put_chunk_map(digest, candidate, frozenset({"https://a:443"}))
            assert recorded is MapRecord.CONTESTED
            assert await index.get_chunk_map(digest) is None


async def learned_at(index: Index, times: dict[str, float]) -> None:
    await index.run(
        lambda db: db.executemany(
            "UPDATE chunk_maps SET learned = ? WHERE digest = ?",
            [(when, digest) for digest, when in times.items()],
        )
    )


async def mapped(index: Index) -> set[str]:
    return {digest for digest in "abcde" if await index.get_chunk_map(digest) is not None}


async def test_pruning_drops_the_oldest_maps_whose_blob_is_not_stored(index):
    for digest in "abcde":
        await index.put_chunk_map(digest, packed_map(digest), frozenset({"https://a:443"}))
    await learned_at(index, {"a": 1.0, "b": 2.0, "c": 3.0, "d": 4.0, "e": 5.0})
    for digest in "ac":
        await index.put_blob(digest, 300, 100, "https://a:443", layout="fixed:100")

    assert await index.prune_chunk_maps(keep=5) == 0
    assert await index.prune_chunk_maps(keep=2) == 1  # b: older than d and e, no blob
    assert await mapped(index) == {"a", "c", "d", "e"}
    await index.put_chunk_map("d", packed_map("d"), frozenset({"https://b:443"}))  # learned now
    assert await index.prune_chunk_maps(keep=1) == 1  # e: d was learned again
    assert await mapped(index) == {"a", "c", "d"}
    await index.delete_blob("a")
    assert await index.prune_chunk_maps(keep=0) == 2  # a and d; c's blob is stored
    assert await mapped(index) == {"c"}
    with pytest.raises(ValueError, match="keep"):
        await index.prune_chunk_maps(keep=-1)
