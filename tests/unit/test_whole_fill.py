"""A whole read filled from stripe-tree parents (Swarm.prove_whole with the engine's WholeFill):
a real engine, store and swarm (its own home), the tree and the parents stand-ins. Bytes reach
the reader only once the whole blob proves them; anything else sends the read the usual way
at once, and what it serves is the exact blob."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from yarl import URL

from dfagent.configtypes import ByteSize
from dfagent.core.digest import Digest
from dfagent.engine.access import AccessGate
from dfagent.engine.fetcher import Engine, FileSegment, _WholeFill
from dfagent.engine.proofs import ChunkProofs
from dfagent.errors import StorageFull
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.swarm.client import PeerError
from dfagent.swarm.directory import Directory
from dfagent.swarm.swarm import Swarm

HOME = "http://registry:5000"
ME = "127.0.0.1:1"
PIECE = 64 * 1024
PIECES = 16
DATA = os.urandom(PIECES * PIECE)
DIGEST = Digest(hashlib.sha256(DATA).hexdigest())
SOURCE = BlobSource(URL(f"{HOME}/v2/app/blobs/{DIGEST}"), DIGEST, None)


def piece(index: int) -> bytes:
    return DATA[index * PIECE : (index + 1) * PIECE]


class Origin:
    """The registry (in the OriginClient's place): every byte as asked, each range counted."""

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []

    async def blob_size(self, source: BlobSource, expected: int | None = None) -> int:
        return len(DATA)

    @contextlib.asynccontextmanager
    async def open_range(self, source, first, last, size=None):  # type: ignore[no-untyped-def]
        self.ranges.append((first, last))

        class Body:
            total = len(DATA)

            @staticmethod
            async def chunks() -> AsyncIterator[bytes]:
                yield DATA[first : last + 1]

        yield Body()


class Trees:
    """Stripe trees in which this agent's parent is "parent:1" but in the stripes of `roots`,
    whose trees start here."""

    def __init__(self, roots: frozenset[int] = frozenset()) -> None:
        self._roots = roots

    def set_members(self, members: list[str]) -> None:
        pass

    def includes(self, peer: str) -> bool:
        return True

    def parent(self, digest: str, index: int, peer: str) -> str | None:
        return None if index % 4 in self._roots else "parent:1"


class Parents:
    """The peer client's piece download: the parent's bytes (`lies` instead, for some
    pieces; none of those it `refuses`), after `delay`."""

    def __init__(
        self,
        lies: dict[int, bytes] | None = None,
        delay: float = 0.0,
        refuses: frozenset[int] = frozenset(),
    ) -> None:
        self.lies = lies or {}
        self.delay = delay
        self.refuses = refuses
        self.asked: list[int] = []

    async def piece(self, peer, digest_hex, origin, index, length, *, arrived=None, tree=False):  # type: ignore[no-untyped-def]
        assert tree
        self.asked.append(index)
        await asyncio.sleep(self.delay)
        if index in self.refuses:
            raise PeerError(f"{peer} answered 404 for piece {index}")
        data = self.lies.get(index, piece(index))
        if arrived is not None:
            arrived(data)
        return data


class Alone:
    """A membership of one: this agent is the home of every blob."""

    me = ME

    def members(self) -> list[str]:
        return [ME]


@dataclass
class Node:
    engine: Engine
    store: PieceStore
    swarm: Swarm
    blob: StoredBlob
    origin: Origin
    metrics: Metrics

    async def prove_whole(self) -> bool:
        with self.blob.pinned():
            fill = _WholeFill(self.engine, self.blob, SOURCE)
            return await self.swarm.prove_whole(self.blob, SOURCE, fill)

    async def read_whole(self) -> bytes:
        parts = []
        async for part in self.engine.segments(self.blob, SOURCE, 0, len(DATA) - 1):
            parts.append(self._bytes(part))
        return b"".join(parts)

    async def read_piece(self, index: int) -> bytes:
        last = (index + 1) * PIECE - 1
        parts = []
        async for part in self.engine.segments(self.blob, SOURCE, index * PIECE, last):
            parts.append(self._bytes(part))
        return b"".join(parts)

    def _bytes(self, part: FileSegment | memoryview) -> bytes:
        if isinstance(part, memoryview):
            return bytes(part)
        return os.pread(part.blob.file.fileno(), part.count, part.offset)


@contextlib.asynccontextmanager
async def node(tmp_path: Path, trees: Trees, parents: Parents) -> AsyncIterator[Node]:
    metrics = Metrics()
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(PIECE), scrub_interval=None)
    async with PieceStore(config, metrics) as store:
        swarm = Swarm(
            Alone(),  # type: ignore[arg-type]
            Directory(holder_ttl=30, lease_ttl=10),
            parents,  # type: ignore[arg-type]
            store,
            metrics,
            refresh=10,
            hedge_after=0.05,
            trees=trees,  # type: ignore[arg-type]
        )
        origin = Origin()
        access = AccessGate(origin, store, enabled=False, ttl=300.0)  # type: ignore[arg-type]
        proofs = ChunkProofs(store, metrics)
        async with Engine(
            store,
            origin,
            metrics,
            access=access,
            proofs=proofs,
            network=swarm,  # type: ignore[arg-type]
        ) as engine:
            blob = await engine.blob(SOURCE, for_client=False)
            yield Node(engine, store, swarm, blob, origin, metrics)
            await swarm.aclose()


async def test_every_piece_comes_from_tree_parents_and_serves_once_the_blob_proves_whole(
    tmp_path,
):
    async with node(tmp_path, Trees(), Parents()) as n:
        assert await n.prove_whole()
        assert n.blob.verified
        assert await n.read_whole() == DATA
        assert n.origin.ranges == []


async def test_a_stripe_whose_tree_starts_here_comes_from_the_origin_a_piece_at_a_time(
    tmp_path,
):
    parents = Parents()
    async with node(tmp_path, Trees(roots=frozenset({0})), parents) as n:
        assert await n.prove_whole()
        assert await n.read_whole() == DATA
        assert sorted(first // PIECE for first, _ in n.origin.ranges) == [0, 4, 8, 12]
        assert sorted(parents.asked) == [i for i in range(PIECES) if i % 4]


async def test_a_parent_that_does_not_send_before_any_parent_did_sends_the_read_the_usual_way(
    tmp_path,
):
    """Say a member reading the blob alone: the quickest read is the usual one."""
    async with node(tmp_path, Trees(), Parents(refuses=frozenset({0}))) as n:
        assert not await n.prove_whole()
        assert n.metrics.tree_fills.labels("not_filled")._value.get() == 1
        assert n.origin.ranges == []
        assert await n.read_whole() == DATA


async def test_a_stripe_whose_parent_does_not_send_a_piece_comes_the_usual_way_from_there(
    tmp_path,
):
    """Once parents have sent pieces (the members read the blob together), a parent that
    does not send one (late to the blob, or failing) costs only its stripe's tree."""
    parents = Parents(refuses=frozenset({5}))
    async with node(tmp_path, Trees(), parents) as n:
        assert await n.prove_whole()
        assert sorted(first // PIECE for first, _ in n.origin.ranges) == [5, 9, 13]
        assert sorted(parents.asked) == [i for i in range(PIECES) if i not in (9, 13)]
        assert n.metrics.tree_stripes_usual._value.get() == 1
        assert await n.read_whole() == DATA


async def test_a_blob_a_lying_parent_filled_is_read_again_with_every_piece_proven(tmp_path):
    async with node(tmp_path, Trees(), Parents(lies={6: os.urandom(PIECE)})) as n:
        assert not await n.prove_whole()
        assert not n.blob.staged  # dropped with the blob that failed its digest
        assert await n.read_whole() == DATA


async def test_a_piece_that_cannot_be_stored_sends_the_read_the_usual_way_at_once(tmp_path):
    """A piece of a stripe whose tree starts here arrives but cannot be stored: the fill
    gives up as soon as nothing else can come, not after waiting for a proof."""
    async with node(tmp_path, Trees(roots=frozenset({0})), Parents()) as n:
        store_piece = n.store.piece_finished

        async def disk_full_for_piece_4(blob, index, data, sha256=None):  # type: ignore[no-untyped-def]
            if index == 4:
                raise StorageFull("no space left")
            return await store_piece(blob, index, data, sha256)

        n.store.piece_finished = disk_full_for_piece_4  # type: ignore[method-assign]
        began = time.monotonic()
        assert not await n.prove_whole()
        assert time.monotonic() - began < 2
        n.store.piece_finished = store_piece  # type: ignore[method-assign]
        assert await n.read_whole() == DATA


async def test_pieces_already_staged_are_not_fetched_again(tmp_path):
    parents = Parents()
    async with node(tmp_path, Trees(), parents) as n:
        for index in (1, 5, 9):
            await n.store.piece_staged(n.blob, index, piece(index))
        assert await n.prove_whole()
        assert sorted(parents.asked) == [i for i in range(PIECES) if i not in (1, 5, 9)]
        assert n.origin.ranges == []


async def test_pieces_proven_whole_are_present_before_they_are_recorded(tmp_path):
    """While the index records the staged pieces of a blob that proved whole, none of them
    may be claimed (and its bytes written over) by another whole read."""
    async with node(tmp_path, Trees(), Parents()) as n:
        record = n.store.index.add_piece
        recording = asyncio.Event()

        async def slow_record(*args, **kwargs):  # type: ignore[no-untyped-def]
            recording.set()
            await asyncio.sleep(0.05)
            return await record(*args, **kwargs)

        n.store.index.add_piece = slow_record  # type: ignore[method-assign]
        for index in range(PIECES):
            await n.store.piece_staged(n.blob, index, piece(index))
        await recording.wait()
        assert _WholeFill(n.engine, n.blob, SOURCE).claim(PIECES - 1) is None
        await n.blob.checked.wait()
        assert n.blob.verified


async def test_a_reader_of_one_piece_a_tree_fill_is_fetching_gets_it_proven(tmp_path):
    """A lazy read of a piece the whole read's fill has claimed is not served the parent's
    unproven bytes: it gets the piece again, the usual way."""
    async with node(tmp_path, Trees(), Parents(lies={2: os.urandom(PIECE)}, delay=0.05)) as n:
        fill = asyncio.create_task(n.prove_whole())
        await asyncio.sleep(0.01)  # piece 2 claimed, on its way from the parent
        assert await n.read_piece(2) == piece(2)
        await fill  # (proven whole with the reader's copy in place of the lie, as it happens)
        assert await n.read_whole() == DATA
