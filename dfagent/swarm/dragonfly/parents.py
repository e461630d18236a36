"""gRPC links to parents' upload servers (dfdaemons, or other members): which pieces they
have, as the pieces become whole there."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc
from dragonfly_api import dfdaemon_pb2, dfdaemon_pb2_grpc

from dfagent.errors import DfagentError
from dfagent.swarm.dragonfly.scheduler import Parent

__all__ = ["ParentError", "ParentLinks"]


class ParentError(DfagentError):
    """A parent's upload server could not be reached or ended a stream with an error."""


class ParentLinks:
    """One channel per parent address, reused by every task."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()

    def _stub(self, parent: Parent) -> dfdaemon_pb2_grpc.DfdaemonUploadStub:
        address = (
            f"[{parent.ip}]:{parent.port}" if ":" in parent.ip else f"{parent.ip}:{parent.port}"
        )
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        return dfdaemon_pb2_grpc.DfdaemonUploadStub(channel)

    async def sync_pieces(
        self, parent: Parent, host_id: str, task_id: str, numbers: Iterable[int]
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        """The pieces of `numbers` the parent has, then each as it becomes whole there; ends
        when the parent has sent them all (or stops)."""
        request = dfdaemon_pb2.SyncPiecesRequest(
            host_id=host_id, task_id=task_id, interested_piece_numbers=list(numbers)
        )
        call = self._stub(parent).SyncPieces(request)
        try:
            async for piece in call:
                yield piece
        except grpc.aio.AioRpcError as exc:
            raise ParentError(f"SyncPieces: {exc.code().name}: {exc.details()}") from None
        finally:
            call.cancel()
