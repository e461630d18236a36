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
    """One channel per parent address, shared by every task's stream to it while any is open;
    closed when the last of them ends, so parents no task follows any more hold nothing."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._streams: dict[str, int] = {}  # address -> streams open on its channel

    async def aclose(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._streams.clear()

    def _open(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.aio.insecure_channel(address)
        self._streams[address] = self._streams.get(address, 0) + 1
        return channel

    async def _release(self, address: str) -> None:
        """A stream on `address`'s channel ended; the last one closes the channel (if
        `aclose` did not already)."""
        left = self._streams.pop(address, 0) - 1
        if left > 0:
            self._streams[address] = left
            return
        channel = self._channels.pop(address, None)
        if channel is not None:
            await channel.close()

    async def sync_pieces(
        self, parent: Parent, host_id: str, task_id: str, numbers: Iterable[int]
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        """The pieces of `numbers` the parent has, then each as it becomes whole there; ends
        when the parent has sent them all (or stops)."""
        request = dfdaemon_pb2.SyncPiecesRequest(
            host_id=host_id, task_id=task_id, interested_piece_numbers=list(numbers)
        )
        address = _address(parent)
        stub = dfdaemon_pb2_grpc.DfdaemonUploadStub(self._open(address))
        call = stub.SyncPieces(request)
        try:
            async for piece in call:
                yield piece
        except grpc.aio.AioRpcError as exc:
            raise ParentError(f"SyncPieces: {exc.code().name}: {exc.details()}") from None
        finally:
            call.cancel()
            await self._release(address)


def _address(parent: Parent) -> str:
    return f"[{parent.ip}]:{parent.port}" if ":" in parent.ip else f"{parent.ip}:{parent.port}"
