"""A Dragonfly member facing hostile or broken peers: a DownloadTask naming one blob's task
after another, parents that trickle, flood SyncPieces or hold it open, a scheduler naming
endless parents, readers that never take an upload. None of them may mislabel a blob, hold a
reader without bound or make this agent keep state without bound."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import types
import zlib
from collections.abc import AsyncIterator

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

from dfagent.configtypes import ByteSize, Duration, ListenAddress
from dfagent.core.digest import Digest
from dfagent.dragonfly import vortex
from dfagent.dragonfly.vortex.wire import PieceMetadata
from dfagent.errors import DfagentError, VortexError
from dfagent.metrics import Metrics
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore
from dfagent.swarm.dragonfly import seed as seed_module
from dfagent.swarm.dragonfly.arrival import Arrival
from dfagent.swarm.dragonfly.config import DragonflyConfig
from dfagent.swarm.dragonfly.layout import DragonflyPieces
from dfagent.swarm.dragonfly.member import DragonflyMember, HostIdentity, _Task
from dfagent.swarm.dragonfly.parents import ParentLinks
from dfagent.swarm.dragonfly.scheduler import Assignment, Parent, Schedulers, parents_of
from dfagent.swarm.dragonfly.seed import Seeder, SeedError
from dfagent.swarm.dragonfly.upload import HeldPieces, UploadServer

A, C = "a" * 64, "c" * 64
MIB = 1024 * 1024
PIECE_TIMEOUT = 0.3


def blob_url(digest_hex: str, tail: str = "") -> str:
    return f"https://registry.example/v2/x/blobs/sha256:{digest_hex}{tail}"


def parent(number: int, port: int = 4000) -> Parent:
    return Parent(f"peer-{number}", f"host-{number}", "127.0.0.1", port, common_pb2.Peer())


def new_task(size: int = MIB) -> _Task:
    return _Task(A, A, "peer", DragonflyPieces.of(size))


class NoLinks:
    """Parents whose SyncPieces stream stays open and says nothing; counts streams closed."""

    def __init__(self) -> None:
        self.closed = 0

    async def sync_pieces(self, *args: object) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        try:
            await asyncio.Event().wait()
            yield dfdaemon_pb2.SyncPiecesResponse()
        finally:
            self.closed += 1


@pytest.fixture
async def member_with():
    """Builds a member (with the parent links given) and closes it after the test."""
    made: list[tuple[DragonflyMember, Schedulers]] = []

    def build(links: object = None) -> DragonflyMember:
        metrics = Metrics()
        schedulers = Schedulers(["127.0.0.1:9"], None, metrics, answer_within=1)
        member = DragonflyMember(
            DragonflyConfig(piece_timeout=Duration(PIECE_TIMEOUT)),
            HostIdentity("127.0.0.1-host", "host", "127.0.0.1"),
            schedulers,
            links=links or ParentLinks(),
            held=HeldPieces(None),
            store=None,
            metrics=metrics,
        )
        made.append((member, schedulers))
        return member

    yield build
    for member, schedulers in made:
        await member.aclose()
        await schedulers.aclose()


# Fault 1: a DownloadTask attaching one blob's bytes to another task --------------------------


class Origin:
    """The engine of a seed member: every fetch waits for `release`, then fails."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.release = asyncio.Event()
        self.release.set()

    async def blob(self, source: object, for_client: bool) -> None:
        self.asked.append(source.digest.hex)
        await self.release.wait()
        raise DfagentError("origin unreachable")


async def started(size: int) -> None:
    raise AssertionError("no blob was fetched")


@pytest.mark.parametrize("tail", [f"?y=/v2/x/blobs/sha256:{C}", f"#/v2/x/blobs/sha256:{C}"])
async def test_a_seed_whose_task_dfdaemon_names_after_another_blob_is_refused(member_with, tail):
    member, origin = member_with(), Origin()
    seeder = Seeder(origin, None, member.back_to_source)
    download = common_pb2.Download(url=blob_url(A, tail), enable_task_id_based_blob_digest=True)
    with pytest.raises(SeedError, match="names its task"):
        await seeder.seed(download, started)
    assert origin.asked == [] and member._seeding == {}


async def test_a_failed_seed_leaves_no_task_name_behind(member_with):
    member, origin = member_with(), Origin()
    seeder = Seeder(origin, None, member.back_to_source)
    download = common_pb2.Download(url=blob_url(A), enable_task_id_based_blob_digest=True)
    with pytest.raises(DfagentError, match="origin unreachable"):
        await seeder.seed(download, started)
    assert origin.asked == [A]
    assert member._seeding == {}


async def test_seeds_under_way_at_once_are_bounded(member_with):
    member, origin = member_with(), Origin()
    origin.release.clear()
    seeder = Seeder(origin, None, member.back_to_source)
    limit = seed_module._MAX_SEEDS

    async def seed(number: int) -> None:
        url = blob_url(f"{number:064x}")
        await seeder.seed(common_pb2.Download(url=url), started)

    running = [asyncio.create_task(seed(n)) for n in range(limit)]
    await asyncio.sleep(0.01)
    with pytest.raises(SeedError, match="under way already"):
        await asyncio.wait_for(seed(limit), 1)
    assert len(member._seeding) == limit
    origin.release.set()
    await asyncio.gather(*running, return_exceptions=True)
    assert member._seeding == {}


# Fault 2: readers that never take an upload ---------------------------------------------------


class BlockedHeld(HeldPieces):
    """Holds piece 0 of blob A (1 MiB); its bytes come out once `release` is set."""

    def __init__(self) -> None:
        super().__init__(None)
        self.release = asyncio.Event()

    async def blob(self, task_id: str) -> object:
        return types.SimpleNamespace(size=MIB) if task_id == A else None

    @staticmethod
    def whole(blob: object, number: int) -> bool:
        return number == 0

    async def crc32(self, blob: object, number: int) -> int:
        return zlib.crc32(bytes(MIB))

    async def chunks(self, blob: object, number: int) -> AsyncIterator[bytes]:
        await self.release.wait()
        yield bytes(MIB)


def upload_server(held: HeldPieces, **limits: float) -> UploadServer:
    loopback = ListenAddress("127.0.0.1", 0)
    return UploadServer(
        loopback, loopback, held, host=common_pb2.Host, ip="127.0.0.1", metrics=Metrics(), **limits
    )


async def test_uploads_beyond_the_slots_are_answered_busy():
    held = BlockedHeld()
    server = upload_server(held, max_uploads=1, slot_wait=0.05)
    await server.start()
    try:
        first = asyncio.create_task(
            vortex.fetch_piece("127.0.0.1", server.tcp_port, A, 0, read_timeout=5)
        )
        await asyncio.sleep(0.1)  # the first upload holds the only slot
        with pytest.raises(VortexError, match="too many uploads"):
            await vortex.fetch_piece("127.0.0.1", server.tcp_port, A, 0, read_timeout=5)
        held.release.set()
        _, data = await asyncio.wait_for(first, 5)
        assert data == bytes(MIB)
    finally:
        await server.stop()


async def test_a_held_piece_is_read_from_disk_and_served_whole(tmp_path):
    data = os.urandom(4 * MIB + 1000)
    digest = Digest(hashlib.sha256(data).hexdigest())
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(MIB), scrub_interval=None)
    async with PieceStore(config, Metrics()) as store:
        blob = await store.create_blob(digest, len(data), "https://registry", public=True)
        for index in range(blob.piece_count):
            start, end = blob.layout.bounds(index)
            await store.piece_finished(blob, index, data[start:end])
        server = upload_server(HeldPieces(store))
        await server.start()
        try:
            for number, piece in enumerate((data[: 4 * MIB], data[4 * MIB :])):
                metadata, served = await vortex.fetch_piece(
                    "127.0.0.1", server.tcp_port, digest.hex, number, read_timeout=5
                )
                assert served == piece
                assert metadata.digest == vortex.crc32_digest(zlib.crc32(piece))
        finally:
            await server.stop()


# Fault 3: a parent that trickles --------------------------------------------------------------


async def test_a_trickling_parent_is_given_up(member_with):
    member = member_with()

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(6 + 68)
        writer.write(PieceMetadata(0, 0, MIB, "", "p").encode())
        with contextlib.suppress(OSError):
            while True:  # a byte well within every read timeout, for ever
                writer.write(b"x")
                await writer.drain()
                await asyncio.sleep(0.02)

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    async with server:
        task = new_task()
        task.parents["trickler"] = parent(0)
        task.holdings["trickler"] = {0: ("127.0.0.1", server.sockets[0].getsockname()[1])}
        async with asyncio.timeout(10 * PIECE_TIMEOUT):
            assert await member._piece(task, 0) is None
        assert task.holdings["trickler"] == {}  # asked no more for that piece


# Fault 4: SyncPieces answers out of bounds, and streams that outlive their task -----------------


class FloodLinks:
    """A parent naming pieces the task does not have, and ports that do not exist."""

    async def sync_pieces(self, *args: object) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        for number in range(1, 10_000):
            yield dfdaemon_pb2.SyncPiecesResponse(number=number, ip="10.0.0.9", tcp_port=4005)
        yield dfdaemon_pb2.SyncPiecesResponse(number=2**32 - 1, tcp_port=4005)
        yield dfdaemon_pb2.SyncPiecesResponse(number=0, tcp_port=70_000)
        yield dfdaemon_pb2.SyncPiecesResponse(number=0, tcp_port=0)
        yield dfdaemon_pb2.SyncPiecesResponse(number=0, tcp_port=4005)


async def test_pieces_a_task_does_not_have_are_ignored(member_with):
    member = member_with(FloodLinks())
    task = new_task()  # one piece
    flood = task.parents["peer-0"] = parent(0)
    await member._sync(task, flood)
    assert task.holdings == {"peer-0": {0: ("127.0.0.1", 4005)}}


async def test_a_forgotten_task_stops_learning_from_its_parents(member_with):
    links = NoLinks()
    member = member_with(links)
    task = new_task()
    member._tasks[task.digest] = task
    member._follow(task, Assignment((parent(0), parent(1)), back_to_source=False))
    await asyncio.sleep(0.01)
    member._forget(task)
    async with asyncio.timeout(1):
        while links.closed < 2:
            await asyncio.sleep(0.01)


# Fault 5: endless parents ------------------------------------------------------------------------


async def test_the_parents_taken_and_followed_are_capped(member_with):
    most = 20  # the most candidate parents a Dragonfly manager lets a scheduler send
    peers = [
        common_pb2.Peer(id=f"p{n}", host=common_pb2.Host(id="h", ip="10.0.0.1", port=4000))
        for n in range(1000)
    ]
    assert 1 <= len(parents_of(peers)) <= most
    links = NoLinks()
    member = member_with(links)
    task = new_task()
    member._tasks[task.digest] = task
    many = tuple(parent(n) for n in range(1000))
    member._follow(task, Assignment(many, back_to_source=False))
    member._follow(task, Assignment(many[500:], back_to_source=False))
    assert 1 <= len(task.parents) <= most
    assert len(task.syncs) == len(task.parents)  # one stream each, no more


class OnePiece(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    async def SyncPieces(self, request, context):
        yield dfdaemon_pb2.SyncPiecesResponse(number=0, ip="127.0.0.1", tcp_port=4005)


async def test_a_channel_no_stream_uses_is_closed():
    server = grpc.aio.server()
    dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(OnePiece(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    links = ParentLinks()
    try:
        streams = [links.sync_pieces(parent(0, port), "h", A, [0]) for _ in range(2)]
        assert [p.number async for p in streams[0]] == [0]
        assert [p.number async for p in streams[1]] == [0]
        assert links._channels == {}
    finally:
        await links.aclose()
        await server.stop(grace=None)


# Fault 6: a nydus piece across a Dragonfly piece boundary ----------------------------------------


async def test_a_piece_across_a_dragonfly_boundary_comes_from_parents_on_first_fetch(member_with):
    member = member_with()
    data = os.urandom(8 * MIB)
    task = _Task(A, A, "peer", DragonflyPieces.of(len(data)))
    assert task.pieces.length == 4 * MIB
    member._tasks[A] = task
    for number in range(2):  # both on their way, arrived whole
        start, end = task.pieces.bounds(number)
        arrival = member._arrivals[(A, number)] = Arrival(end - start)
        arrival.add(data[start:end])
        arrival.end(whole=True)
    start, end = 4 * MIB - 100, 4 * MIB + 100
    layout = types.SimpleNamespace(bounds=lambda index: (start, end))
    blob = types.SimpleNamespace(digest=Digest(A), layout=layout)

    async def proven(piece: bytes) -> bool:
        return True

    piece = await member.fetch(blob, 0, None, check=proven)
    assert piece is not None and piece.data == data[start:end]
