"""Building cache directories directly, for tests and benchmarks of start-up."""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from pathlib import Path

from dfagent.storage.index import Index


def synthetic_cache(
    root: Path, pieces: int, per_blob: int, piece_size: int, *, data_files: bool = True
) -> list[str]:
    """An index of `pieces` recorded pieces (random sha256s) over `pieces // per_blob` blobs,
    with sparse data files (or none). Returns the blobs' digest hexes."""
    (root / "blobs").mkdir(parents=True)

    async def create_schema() -> None:
        index = Index(root / "index.sqlite")
        await index.open()
        await index.close()

    asyncio.run(create_schema())
    now = time.time()
    digests = []
    with sqlite3.connect(root / "index.sqlite") as db:
        for blob in range(pieces // per_blob):
            digest = hashlib.sha256(f"blob-{blob}".encode()).hexdigest()
            digests.append(digest)
            size = per_blob * piece_size
            db.execute(
                "INSERT INTO blobs (digest, size, piece_size, created, last_access, origin) "
                "VALUES (?, ?, ?, ?, ?, 'https://r:443')",
                (digest, size, piece_size, now, now - blob),
            )
            db.executemany(
                "INSERT INTO pieces VALUES (?, ?, ?, ?, ?)",
                [(digest, i, piece_size, os.urandom(32), now) for i in range(per_blob)],
            )
            if data_files:
                path = root / "blobs" / digest[:2] / digest
                path.parent.mkdir(exist_ok=True)
                with path.open("wb") as file:
                    file.truncate(size)
    return digests
