"""Pieces reach a blob's data file one at a time (threads waiting in the kernel for the file's
lock spin on the CPU), while other blobs' pieces are written meanwhile; every byte lands."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from collections import Counter

from dfagent.configtypes import ByteSize
from dfagent.core.digest import Digest
from dfagent.metrics import Metrics
from dfagent.storage import store as store_module
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore

PIECE = 64 * 1024
PIECES = 4
ORIGIN = "http://registry:5000"


def _blob_bytes() -> tuple[bytes, Digest]:
    data = os.urandom(PIECES * PIECE)
    return data, Digest(hashlib.sha256(data).hexdigest())


async def test_one_piece_at_a_time_reaches_a_blob_s_file_and_blobs_write_side_by_side(
    tmp_path, monkeypatch
):
    writing: Counter[int] = Counter()  # fd -> writes in progress
    most: Counter[int] = Counter()
    lock = threading.Lock()
    real = store_module._pwrite_all

    def slow_pwrite(fd: int, data, offset: int) -> None:
        with lock:
            writing[fd] += 1
            most[fd] = max(most[fd], writing[fd])
            both = len(+writing)
        most[-1] = max(most[-1], both)  # (blobs written at the same moment)
        time.sleep(0.02)
        real(fd, data, offset)
        with lock:
            writing[fd] -= 1

    monkeypatch.setattr(store_module, "_pwrite_all", slow_pwrite)
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(PIECE), scrub_interval=None)
    async with PieceStore(config, Metrics()) as store:
        blobs = []
        for _ in range(2):
            data, digest = _blob_bytes()
            blobs.append((await store.create_blob(digest, len(data), ORIGIN, public=True), data))
        await asyncio.gather(
            *(
                store.piece_finished(blob, i, data[i * PIECE : (i + 1) * PIECE])
                for blob, data in blobs
                for i in range(PIECES)
            )
        )
        for blob, data in blobs:
            await asyncio.wait_for(blob.checked.wait(), 10)
            assert blob.verified
            with open(blob.path, "rb") as file:
                assert file.read() == data
            assert most[blob.file.fileno()] == 1
    assert most[-1] == 2
