from __future__ import annotations

import sqlite3

from dfagent.storage.index import Index

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
