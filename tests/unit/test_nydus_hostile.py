"""Chunk maps a hostile or huge bootstrap may give: near a million chunks (seconds to decode,
pack, compare and cut) never hold up the event loop, every such step runs in a thread; a map
stored by an earlier version that this one refuses costs the blob cut by it, nothing more."""

from __future__ import annotations

import hashlib
import sqlite3
import struct
import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from yarl import URL

from dfagent.configtypes import ByteSize
from dfagent.core.digest import Digest
from dfagent.engine.access import AccessGate
from dfagent.engine.fetcher import Engine
from dfagent.engine.proofs import ChunkProofs
from dfagent.metrics import Metrics
from dfagent.nydus import Chunk, ChunkMap, Compression, DigestAlgorithm
from dfagent.origin.client import BlobSource
from dfagent.storage.config import StorageConfig
from dfagent.storage.layout import ChunkLayout
from dfagent.storage.store import PieceStore

HOME = "http://registry:5000"
DIGEST = Digest(hashlib.sha256(b"a nydus data blob").hexdigest())
SIZE = 10 * 4096 + 512  # ten chunks and a metadata tail
HEAVY = ("from_bytes", "to_bytes", "__eq__", "layout")


class SizedOrigin:
    """A registry (in the OriginClient's place) that knows the blob's size, nothing more."""

    async def blob_size(self, source: BlobSource, expected: int | None = None) -> int:
        return SIZE


def ten_chunks() -> ChunkMap:
    return ChunkMap(
        DIGEST.hex,
        tuple(
            Chunk(i, i * 4096, 4096, i * 4096, 4096, Compression.NONE, DigestAlgorithm.SHA256,
                  bytes(32))
            for i in range(10)
        ),
    )  # fmt: skip


def threads_of_heavy_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, set[int]]:
    """Which threads decode (from_bytes), pack (to_bytes), compare (__eq__) and cut (a
    ChunkLayout) chunk maps from now on."""
    seen: dict[str, set[int]] = defaultdict(set)

    def watched(name: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            seen[name].add(threading.get_ident())
            return call(*args)

        return run

    from_bytes = ChunkMap.from_bytes
    monkeypatch.setattr(ChunkMap, "from_bytes", staticmethod(watched("from_bytes", from_bytes)))
    monkeypatch.setattr(ChunkMap, "to_bytes", watched("to_bytes", ChunkMap.to_bytes))
    monkeypatch.setattr(ChunkMap, "__eq__", watched("__eq__", ChunkMap.__eq__))
    monkeypatch.setattr(ChunkLayout, "__init__", watched("layout", ChunkLayout.__init__))
    return seen


async def test_chunk_maps_are_decoded_packed_compared_and_cut_off_the_event_loop(
    tmp_path, monkeypatch
):
    seen = threads_of_heavy_calls(monkeypatch)
    metrics = Metrics()
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(1 << 20), scrub_interval=None)
    source = BlobSource(URL(f"{HOME}/v2/app/blobs/{DIGEST}"), DIGEST, None)
    async with PieceStore(config, metrics) as store:
        proofs = ChunkProofs(store, metrics)
        learned = frozenset({HOME})
        await proofs._record(DIGEST.hex, ten_chunks(), learned, bootstrap="sha256:" + "b" * 64)
        origin = SizedOrigin()
        access = AccessGate(origin, store, enabled=False, ttl=300.0)  # type: ignore[arg-type]
        async with Engine(store, origin, metrics, access=access, proofs=proofs) as engine:  # type: ignore[arg-type]
            blob = await engine.blob(source, for_client=False)  # the map known, cut twice
            assert isinstance(blob.layout, ChunkLayout)
            # the same map from another bootstrap: compared with the one the blob is cut by
            await proofs._record(DIGEST.hex, ten_chunks(), learned, bootstrap="sha256:" + "c" * 64)
    async with PieceStore(config, metrics) as store:  # the blob as the index recorded it
        again = await store.open_blob(DIGEST)
        assert again is not None and isinstance(again.layout, ChunkLayout)
    assert sorted(seen) == sorted(HEAVY)
    loop_thread = threading.get_ident()
    assert {name: loop_thread in threads for name, threads in seen.items()} == dict.fromkeys(
        HEAVY, False
    )


def far_apart_packed() -> bytes:
    """The packed form of the ten chunks with the last moved a TiB away: a map this version
    refuses, as an index written by an earlier one may hold."""
    packed = bytearray(ten_chunks().to_bytes())
    last_offset_at = 10 + 64 + 9 * 65 + 4  # header, blob id, nine records; the tenth's offset
    assert struct.unpack_from("<Q", packed, last_offset_at) == (9 * 4096,)
    struct.pack_into("<Q", packed, last_offset_at, 1 << 40)
    return bytes(packed)


async def test_a_blob_cut_by_a_stored_map_now_refused_is_forgotten(tmp_path):
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(1 << 20), scrub_interval=None)
    async with PieceStore(config, Metrics()) as store:
        await store.index.put_chunk_map(DIGEST.hex, ten_chunks().to_bytes(), frozenset({HOME}))
        await store.create_blob(DIGEST, SIZE, HOME, chunk_map=ten_chunks())
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        db.execute("UPDATE chunk_maps SET packed = ?", (far_apart_packed(),))
    async with PieceStore(config, Metrics()) as store:
        assert await store.open_blob(DIGEST) is None
        assert await store.index.get_blob(DIGEST.hex) is None


async def test_maps_that_agree_stand_together_and_a_contradicting_one_contests_the_blob(tmp_path):
    metrics = Metrics()
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(1 << 20), scrub_interval=None)
    whole = ten_chunks()
    fewer = ChunkMap(DIGEST.hex, whole.chunks[::2])  # an image whose upper layer deleted files
    liar = ChunkMap(DIGEST.hex, (*whole.chunks[:9], replace(whole.chunks[9], digest=b"\1" * 32)))
    async with PieceStore(config, metrics) as store:
        proofs = ChunkProofs(store, metrics)
        for n, chunk_map in enumerate([whole, fewer]):
            await proofs._record(DIGEST.hex, chunk_map, frozenset({HOME}), bootstrap=f"b{n}")
        assert await store.index.get_chunk_map(DIGEST.hex) == (whole.to_bytes(), {HOME})
        await proofs._record(DIGEST.hex, liar, frozenset({HOME}), bootstrap="b2")
        assert await store.index.get_chunk_map(DIGEST.hex) is None
        await proofs._record(DIGEST.hex, whole, frozenset({HOME}), bootstrap="b3")  # too late
        assert await store.index.get_chunk_map(DIGEST.hex) is None
    assert metrics.registry.get_sample_value("dfagent_chunk_maps_contested_total") == 1


async def test_a_blob_created_after_its_map_was_contested_is_cut_into_fixed_pieces(tmp_path):
    """A discovery that looked the map up before the contest must not cut the blob by it."""
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(1 << 20), scrub_interval=None)
    async with PieceStore(config, Metrics()) as store:
        await store.index.put_chunk_map(DIGEST.hex, ten_chunks().to_bytes(), frozenset({HOME}))
        assert await store.contest_chunk_map(DIGEST.hex)
        blob = await store.create_blob(
            DIGEST, SIZE, HOME, chunk_map=ten_chunks(), vouchers=frozenset({HOME})
        )
        assert not isinstance(blob.layout, ChunkLayout)
        assert blob.vouchers == frozenset()
