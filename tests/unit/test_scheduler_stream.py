"""A scheduler that answers a registration late (after dragonfly.schedule_timeout): the peer
stream stays usable. Cancelling a pending read would end the whole gRPC call, and with it
every report the download still has to make. (A fault the real scheduler cannot be made to
produce on demand; this one speaks its real API.)"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from dragonfly_api import common_pb2, scheduler_pb2, scheduler_pb2_grpc

from dfagent.metrics import Metrics
from dfagent.swarm.dragonfly.scheduler import SchedulerError, Schedulers

PATIENCE = 0.2


class LateScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Answers a registration only after three times the member's patience."""

    def __init__(self) -> None:
        self.received: list[str] = []

    async def AnnouncePeer(self, request_iterator, context):
        async for request in request_iterator:
            self.received.append(request.WhichOneof("request"))
            if request.HasField("register_peer_request"):
                await asyncio.sleep(3 * PATIENCE)
                answer = scheduler_pb2.NeedBackToSourceResponse(description="late")
                yield scheduler_pb2.AnnouncePeerResponse(need_back_to_source_response=answer)


@pytest.fixture
async def late_scheduler():
    server = grpc.aio.server()
    scheduler = LateScheduler()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(scheduler, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield scheduler, f"127.0.0.1:{port}"
    await server.stop(grace=None)


async def test_a_late_answer_leaves_the_peer_stream_usable(late_scheduler):
    scheduler, address = late_scheduler
    schedulers = Schedulers([address], None, Metrics(), answer_within=PATIENCE)
    try:
        stream = schedulers.peer_stream("host", "task", "peer")
        download = common_pb2.Download(url="http://registry:5000/v2/a/blobs/sha256:" + "0" * 64)
        with pytest.raises(SchedulerError, match="no answer"):
            await stream.register(download)
        await stream.started(back_to_source=True)
        piece = common_pb2.Piece(number=0, length=4, traffic_type=common_pb2.BACK_TO_SOURCE)
        await stream.piece_finished(piece)
        await stream.finished(back_to_source=True)
        assert scheduler.received == [
            "register_peer_request",
            "download_peer_back_to_source_started_request",
            "download_piece_back_to_source_finished_request",
            "download_peer_back_to_source_finished_request",
        ]
    finally:
        await schedulers.aclose()
