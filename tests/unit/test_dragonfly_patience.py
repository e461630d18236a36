"""A scheduler that takes a while to name parents (its seed peer is still fetching the blob
from the origin, so it tries again until the seed has pieces): lazy reads do not wait for it
beyond dragonfly.schedule_timeout, yet the registration goes on and its parents are taken; a
whole read waits for the answer. (The real scheduler's delay depends on its seed peer; this
one speaks its real API and answers late on purpose.)"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from dragonfly_api import common_pb2, dfdaemon_pb2, scheduler_pb2, scheduler_pb2_grpc
from yarl import URL

from dfagent.configtypes import ByteSize, Duration
from dfagent.core.digest import Digest
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore
from dfagent.swarm.directory import Answer
from dfagent.swarm.dragonfly.config import DragonflyConfig
from dfagent.swarm.dragonfly.member import DragonflyMember, HostIdentity
from dfagent.swarm.dragonfly.scheduler import ANSWER_SECONDS, Schedulers
from dfagent.swarm.dragonfly.upload import HeldPieces

MIB = 1024 * 1024
PATIENCE = 0.3  # dragonfly.schedule_timeout
LATE = 4 * PATIENCE  # when the scheduler names a parent
DATA = os.urandom(2 * MIB)
DIGEST = Digest(hashlib.sha256(DATA).hexdigest())
SOURCE = BlobSource(URL(f"http://registry:5000/v2/app/blobs/{DIGEST}"), DIGEST, None)
TO_ORIGIN = Answer(None, (), True, None)


class SlowScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Names one parent, LATE seconds after the registration."""

    async def AnnouncePeer(self, request_iterator, context):
        async for request in request_iterator:
            if request.HasField("register_peer_request"):
                await asyncio.sleep(LATE)
                host = common_pb2.Host(id="seed-host", ip="127.0.0.1", port=9)
                seed = common_pb2.Peer(id="seed-peer", host=host)
                answer = scheduler_pb2.NormalTaskResponse(candidate_parents=[seed])
                yield scheduler_pb2.AnnouncePeerResponse(normal_task_response=answer)


class SilentParents:
    """A parent whose SyncPieces stream stays open and names no piece (the seed has none yet)."""

    async def sync_pieces(self, *args: object) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        await asyncio.Event().wait()
        yield dfdaemon_pb2.SyncPiecesResponse()


@pytest.fixture
async def scheduler_address():
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SlowScheduler(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(grace=None)


@pytest.fixture
async def member_and_blob(tmp_path, scheduler_address):
    metrics = Metrics()
    storage = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(MIB), scrub_interval=None)
    schedulers = Schedulers([scheduler_address], None, metrics, answer_within=ANSWER_SECONDS)
    async with PieceStore(storage, metrics) as store:
        blob = await store.create_blob(DIGEST, len(DATA), "http://registry:5000", public=True)
        member = DragonflyMember(
            DragonflyConfig(schedule_timeout=Duration(PATIENCE), piece_timeout=Duration(0.2)),
            HostIdentity("127.0.0.1-host", "host", "127.0.0.1"),
            schedulers,
            links=SilentParents(),  # type: ignore[arg-type]
            held=HeldPieces(store),
            store=store,
            metrics=metrics,
        )
        try:
            yield member, blob
        finally:
            await member.aclose()
            await schedulers.aclose()


async def test_lazy_reads_wait_for_the_scheduler_no_longer_than_schedule_timeout(member_and_blob):
    member, blob = member_and_blob
    began = time.monotonic()
    assert await member.lookup(blob, SOURCE, [0]) == {0: TO_ORIGIN}
    assert PATIENCE * 0.9 <= time.monotonic() - began < LATE
    # a later read of the blob does not wait again: the first one already did
    again = time.monotonic()
    assert await member.lookup(blob, SOURCE, [1]) == {1: TO_ORIGIN}
    assert time.monotonic() - again < PATIENCE / 2
    # the registration went on: the late answer's parent is followed
    task = member._tasks[DIGEST.hex]
    await asyncio.wait_for(task.ready.wait(), LATE + PATIENCE + 5)
    assert not task.back_to_source
    assert list(task.parents) == ["seed-peer"]


async def test_a_whole_read_waits_for_the_scheduler_to_name_parents(member_and_blob):
    member, blob = member_and_blob
    began = time.monotonic()
    # the parent never names a piece, so the fill fails: but only after the answer came
    assert not await member.prove_whole(blob, SOURCE, fill=None)  # (a member fills its own way)
    assert time.monotonic() - began >= LATE
    assert list(member._tasks[DIGEST.hex].parents) == ["seed-peer"]
