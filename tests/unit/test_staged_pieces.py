"""Staged pieces (bytes only the whole blob's digest can prove, such as a Dragonfly parent's):
never present until the blob matched its digest, then present and indexed; a blob that does
not match is purged with them; a restart forgets them."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time

from dfagent.configtypes import ByteSize
from dfagent.core.digest import Digest
from dfagent.metrics import Metrics
from dfagent.storage import store as store_module
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore

PIECE = 64 * 1024
ORIGIN = "http://registry:5000"


def _config(path) -> StorageConfig:
    return StorageConfig(dir=str(path), piece_size=ByteSize(PIECE), scrub_interval=None)


def _blob_bytes() -> tuple[bytes, Digest]:
    data = os.urandom(3 * PIECE + 100)
    return data, Digest(hashlib.sha256(data).hexdigest())


def _piece(data: bytes, index: int) -> bytes:
    return data[index * PIECE : (index + 1) * PIECE]


async def _stage(store: PieceStore, blob, data: bytes, indices) -> None:
    for index in indices:
        piece = _piece(data, index)
        await store.piece_staged(blob, index, piece, hashlib.sha256(piece).digest())


async def test_staged_pieces_become_present_only_with_the_verified_blob(tmp_path):
    data, digest = _blob_bytes()
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        await _stage(store, blob, data, [0, 1, 2])
        assert not any(blob.has(i) for i in range(4))
        assert store.stored_pieces == 0
        await _stage(store, blob, data, [3])
        await asyncio.wait_for(blob.checked.wait(), 10)
        assert blob.verified
        assert all(blob.has(i) for i in range(4)) and not blob.staged
        assert store.stored_pieces == 4
        with open(blob.path, "rb") as file:
            assert file.read() == data
    async with PieceStore(_config(tmp_path), Metrics()) as store:  # recorded in the index
        again = await store.open_blob(digest)
        assert again is not None and again.verified and again.complete


async def test_staged_and_fetched_pieces_are_checked_together(tmp_path):
    data, digest = _blob_bytes()
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        await _stage(store, blob, data, [1, 3])
        for index in (0, 2):
            piece = _piece(data, index)
            await store.piece_finished(blob, index, piece, hashlib.sha256(piece).digest())
        await asyncio.wait_for(blob.checked.wait(), 10)
        assert blob.verified and blob.complete


async def test_a_wrong_staged_piece_is_never_present_and_the_staged_pieces_are_dropped(tmp_path):
    """The blob fails its digest: the staged (unproven) pieces are the suspects and go; the
    blob stays, is filled again (from its origin), and verifies."""
    data, digest = _blob_bytes()
    metrics = Metrics()
    async with PieceStore(_config(tmp_path), metrics) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        origin_piece = _piece(data, 0)
        await store.piece_finished(blob, 0, origin_piece, hashlib.sha256(origin_piece).digest())
        await _stage(store, blob, data, [2, 3])
        lie = bytes(PIECE)
        checked = blob.checked
        await store.piece_staged(blob, 1, lie, hashlib.sha256(lie).digest())
        await asyncio.wait_for(checked.wait(), 10)
        assert not blob.verified and not blob.removed
        assert not blob.staged and [i for i in range(4) if blob.has(i)] == [0]
        assert metrics.blob_verify_failures._value.get() == 1
        for index in (1, 2, 3):
            piece = _piece(data, index)
            await store.piece_finished(blob, index, piece, hashlib.sha256(piece).digest())
        await asyncio.wait_for(blob.checked.wait(), 10)
        assert blob.verified
        with open(blob.path, "rb") as file:
            assert file.read() == data


async def test_a_restart_forgets_staged_pieces(tmp_path):
    data, digest = _blob_bytes()
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        await _stage(store, blob, data, [0, 1])
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        again = await store.open_blob(digest)
        assert again is not None
        assert not again.piece_sha256 and not again.staged


async def test_a_piece_fetched_over_a_staged_one_replaces_it(tmp_path):
    data, digest = _blob_bytes()
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        lie = bytes(PIECE)
        await store.piece_staged(blob, 0, lie, hashlib.sha256(lie).digest())
        for index in range(4):  # the origin's bytes, piece 0 over the staged lie
            piece = _piece(data, index)
            await store.piece_finished(blob, index, piece, hashlib.sha256(piece).digest())
        await asyncio.wait_for(blob.checked.wait(), 10)
        assert blob.verified and not blob.staged
        assert blob.piece_sha256[0] == hashlib.sha256(_piece(data, 0)).digest()


def _slow_writes_of(monkeypatch, slow: bytes, seconds: float) -> None:
    """Writes of exactly `slow` reach the disk `seconds` late (a worker thread scheduled
    late); other writes as usual."""
    real = store_module._hash_and_write

    def late(fd, writing, data, offset, sha256):
        if bytes(data) == slow:
            time.sleep(seconds)
        return real(fd, writing, data, offset, sha256)

    monkeypatch.setattr(store_module, "_hash_and_write", late)


async def test_a_staged_write_never_lands_over_a_piece_recorded_meanwhile(tmp_path, monkeypatch):
    """A parent's unproven copy of a piece is being written when the origin's copy of the
    same piece arrives and is recorded present. Whichever write the threads finish last, the
    disk holds the recorded, proven bytes."""
    data, digest = _blob_bytes()
    wrong = bytes(PIECE)
    _slow_writes_of(monkeypatch, wrong, 0.3)
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        staging = asyncio.create_task(
            store.piece_staged(blob, 0, wrong, hashlib.sha256(wrong).digest())
        )
        await asyncio.sleep(0.05)  # the parent's write is on its way
        await store.piece_finished(blob, 0, _piece(data, 0))
        await staging
        assert blob.has(0) and 0 not in blob.staged
        with open(blob.path, "rb") as file:
            assert file.read(PIECE) == _piece(data, 0)


async def test_a_piece_written_into_a_purged_blob_is_let_go(tmp_path, monkeypatch):
    """The blob is purged while one of its pieces is on its way to disk: the write ends
    quietly (nothing is recorded for a blob that is gone), not with a database error."""
    data, digest = _blob_bytes()
    _slow_writes_of(monkeypatch, _piece(data, 0), 0.2)
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        with blob.pinned():
            writing = asyncio.create_task(store.piece_finished(blob, 0, _piece(data, 0)))
            await asyncio.sleep(0.05)
            await store.purge(blob, "test")
            await writing
        assert not blob.has(0)
        assert store.stored_pieces == 0
        assert await store.open_blob(digest) is None


async def test_a_proven_piece_recorded_while_the_blob_is_verified_keeps_its_sha256(
    tmp_path, monkeypatch
):
    """A parent's wrong copy of piece 0 is staged; the origin's copy replaces it on disk and
    is being recorded when the last staged piece makes the blob whole and it checks out. The
    index keeps the proven piece's sha256, not the staged copy's (the check ran on the
    origin's bytes), and says what the process says."""
    data, digest = _blob_bytes()
    wrong = bytes(PIECE)
    proven = hashlib.sha256(_piece(data, 0)).digest()
    recording = asyncio.Event()
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        record = store.index.add_piece

        async def slow_record(digest_hex, index, length, sha256):  # type: ignore[no-untyped-def]
            if index == 0:
                if sha256 == proven:
                    recording.set()
                await asyncio.sleep(0.1 if sha256 == proven else 0.2)
            return await record(digest_hex, index, length, sha256)

        store.index.add_piece = slow_record  # type: ignore[method-assign]
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        await store.piece_staged(blob, 0, wrong, hashlib.sha256(wrong).digest())
        finishing = asyncio.create_task(store.piece_finished(blob, 0, _piece(data, 0)))
        await recording.wait()  # the origin's bytes are on disk, being recorded
        await _stage(store, blob, data, [1, 2, 3])
        await finishing
        await asyncio.wait_for(blob.checked.wait(), 10)
        await asyncio.sleep(0.3)  # (any late record of piece 0 lands)
        assert blob.verified and blob.piece_sha256[0] == proven
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        again = await store.open_blob(digest)
        assert again is not None and again.verified
        assert again.piece_sha256[0] == proven


async def test_a_blob_forgotten_while_it_is_checked_leaves_no_rows(tmp_path, monkeypatch, caplog):
    """Purged (or evicted) while its whole-blob check runs: the check ends quietly and records
    nothing for a blob that is gone (rows without their bytes would count in the cache's
    usage; the index refuses them)."""
    caplog.set_level(logging.DEBUG, logger="dfagent.tasks")
    data, digest = _blob_bytes()
    real = store_module.sha256_of_file
    hashing = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_hash(fd, offset, length):  # type: ignore[no-untyped-def]
        loop.call_soon_threadsafe(hashing.set)
        time.sleep(0.2)
        return real(fd, offset, length)

    monkeypatch.setattr(store_module, "sha256_of_file", slow_hash)
    async with PieceStore(_config(tmp_path), Metrics()) as store:
        blob = await store.create_blob(digest, len(data), ORIGIN, public=True)
        await _stage(store, blob, data, [0, 1, 2, 3])
        await hashing.wait()
        await store.purge(blob, "test")
        await asyncio.sleep(0.4)  # (the check ends)
        assert not blob.verified
        assert await store.index.usage() == (0, 0, 0)
    assert not [r.getMessage() for r in caplog.records if r.name == "dfagent.tasks"]
