"""This member's upload side: dfdaemons (and other members) ask which Dragonfly pieces it has
(gRPC `DfdaemonUpload.SyncPieces`, its host's state with `SyncHost`) and fetch them over Vortex.

Only pieces present in the cache (not staged) of blobs an origin served anonymously are
offered; a private blob's bytes never leave this agent for the cluster. At most _MAX_UPLOADS
pieces go out at once, each read from disk a slice at a time, so that requesters, however many
and however slow, hold a bounded share of memory."""

from __future__ import annotations

import asyncio
import logging
import os
import zlib
from collections.abc import AsyncIterator, Callable

import grpc
from dragonfly_api import common_pb2, dfdaemon_pb2, dfdaemon_pb2_grpc

from dfagent.configtypes import ListenAddress
from dfagent.core.digest import Digest, InvalidDigest
from dfagent.dragonfly import vortex
from dfagent.errors import DfagentError, StartupError
from dfagent.metrics import Metrics
from dfagent.serving import bind
from dfagent.storage.store import PieceStore, StoredBlob
from dfagent.swarm.dragonfly.health import health_handler
from dfagent.swarm.dragonfly.layout import DragonflyPieces
from dfagent.swarm.dragonfly.seed import Seeds
from dfagent.swarm.slots import UploadSlots
from dfagent.tasks import TaskOwner

__all__ = ["HeldPieces", "UploadServer"]

log = logging.getLogger(__name__)

_SYNC_IDLE_SECONDS = 300.0  # a SyncPieces stream waiting this long for a piece ends
_SYNC_HOST_SECONDS = 5.0
_MAX_NAMED = 65536  # task ids named by URL that are remembered (oldest forgotten first)
_MAX_UPLOADS = 16  # Vortex pieces sent at once (as the builtin swarm's peer.max_uploads)
_SLOT_WAIT = 2.0  # a request waits this long for an upload slot, then is answered busy
_READ_SIZE = 1024 * 1024  # bytes of a piece read from disk at a time for an upload


class HeldPieces:
    """The Dragonfly pieces this agent can give: whole here, of a public blob."""

    def __init__(self, store: PieceStore) -> None:
        self._store = store
        self._digests: dict[str, str] = {}  # task ids not named by their blob's digest
        self._changed = asyncio.Event()  # set (and replaced) when pieces became whole here

    def wake(self) -> None:
        """Some pieces became whole here: streams waiting for them look again."""
        self._changed.set()
        self._changed = asyncio.Event()

    def name(self, task_id: str, digest_hex: str) -> None:
        """Remember that `task_id` is the blob `digest_hex` (a task named by its URL)."""
        if task_id != digest_hex:
            self._digests[task_id] = digest_hex
            if len(self._digests) > _MAX_NAMED:
                del self._digests[next(iter(self._digests))]

    async def blob(self, task_id: str) -> StoredBlob | None:
        """The blob a task id names: by default its digest's hex, else one named before."""
        try:
            digest = Digest.parse(f"sha256:{self._digests.get(task_id, task_id)}")
        except InvalidDigest:
            return None
        blob = await self._store.open_blob(digest)
        return blob if blob is not None and blob.public else None

    @staticmethod
    def whole(blob: StoredBlob, number: int) -> bool:
        pieces = DragonflyPieces.of(blob.size)
        return number < pieces.count and pieces.whole(number, blob.layout, blob.piece_sha256)

    async def grown(self, patience: float) -> None:
        """Return when some piece became whole here, or after `patience` seconds."""
        changed = self._changed
        try:
            async with asyncio.timeout(patience):
                await changed.wait()
        except TimeoutError:
            pass

    async def read(self, blob: StoredBlob, number: int) -> bytes:
        start, end = DragonflyPieces.of(blob.size).bounds(number)
        with blob.pinned():
            return await asyncio.to_thread(_read, blob.file.fileno(), start, end - start)

    async def crc32(self, blob: StoredBlob, number: int) -> int:
        """The CRC-32 of piece `number`, read a slice at a time."""
        start, end = DragonflyPieces.of(blob.size).bounds(number)
        with blob.pinned():
            return await asyncio.to_thread(_crc32, blob.file.fileno(), start, end)

    async def chunks(self, blob: StoredBlob, number: int) -> AsyncIterator[bytes]:
        """Piece `number`'s bytes, read a slice at a time (the blob stays pinned until the
        last is read, or the iterator is closed)."""
        start, end = DragonflyPieces.of(blob.size).bounds(number)
        with blob.pinned():
            fd = blob.file.fileno()
            for offset in range(start, end, _READ_SIZE):
                yield await asyncio.to_thread(_read, fd, offset, min(_READ_SIZE, end - offset))


def _read(fd: int, offset: int, count: int) -> bytes:
    data = os.pread(fd, count, offset)
    if len(data) != count:
        raise OSError(f"short read at {offset}")
    return data


def _crc32(fd: int, start: int, end: int) -> int:
    crc = 0
    for offset in range(start, end, _READ_SIZE):
        crc = zlib.crc32(_read(fd, offset, min(_READ_SIZE, end - offset)), crc)
    return crc


class _Upload(dfdaemon_pb2_grpc.DfdaemonUploadServicer):
    def __init__(
        self,
        held: HeldPieces,
        host: Callable[[], common_pb2.Host],
        ip: str,
        tcp_port: Callable[[], int],
    ) -> None:
        self._held = held
        self._host = host
        self._ip = ip
        self._tcp_port = tcp_port
        self.seeds: Seeds | None = None  # set on a seed peer, once the engine runs
        self.jobs = TaskOwner("dragonfly-upload")

    async def SyncPieces(
        self, request: dfdaemon_pb2.SyncPiecesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.SyncPiecesResponse]:
        blob = await self._held.blob(request.task_id)
        if blob is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"task {request.task_id} not found")
        assert blob is not None
        pieces = DragonflyPieces.of(blob.size)
        wanted = set(request.interested_piece_numbers) or set(range(pieces.count))
        wanted &= set(range(pieces.count))
        loop = asyncio.get_running_loop()
        idle_until = loop.time() + _SYNC_IDLE_SECONDS
        while wanted and not blob.removed:
            ready = sorted(n for n in wanted if self._held.whole(blob, n))
            for number in ready:
                start, end = pieces.bounds(number)
                yield dfdaemon_pb2.SyncPiecesResponse(
                    number=number, offset=start, length=end - start, ip=self._ip,
                    tcp_port=self._tcp_port(),
                )  # fmt: skip
            wanted.difference_update(ready)
            if ready:
                idle_until = loop.time() + _SYNC_IDLE_SECONDS
            elif wanted:  # until some piece here grows (of any blob), or too long idle
                if loop.time() >= idle_until:
                    return
                await self._held.grown(idle_until - loop.time())

    async def DownloadTask(
        self, request: dfdaemon_pb2.DownloadTaskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dfdaemon_pb2.DownloadTaskResponse]:
        """The scheduler sends a seed peer a first fetch: fetch the blob whole, saying when
        it started; the stream ends when it is here."""
        if self.seeds is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this host is not a seed peer")
        assert self.seeds is not None
        size: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def started(content_length: int) -> None:
            size.set_result(content_length)

        job = self.jobs.spawn(self.seeds.seed(request.download, started), name="seed")
        try:
            await asyncio.wait({job, size}, return_when=asyncio.FIRST_COMPLETED)
            if size.done():
                response = dfdaemon_pb2.DownloadTaskStartedResponse(content_length=size.result())
                yield dfdaemon_pb2.DownloadTaskResponse(download_task_started_response=response)
            await job
        except DfagentError as exc:
            log.info("seed download failed", extra={"url": request.download.url,
                                                    "error": str(exc)})  # fmt: skip
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        finally:
            job.cancel()

    async def SyncHost(
        self, request: dfdaemon_pb2.SyncHostRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[common_pb2.Host]:
        while True:
            yield self._host()
            await asyncio.sleep(_SYNC_HOST_SECONDS)


class UploadServer:
    """The upload gRPC server and the Vortex TCP server, on Dragonfly's ports."""

    def __init__(
        self,
        upload: ListenAddress,
        tcp: ListenAddress,
        held: HeldPieces,
        *,
        host: Callable[[], common_pb2.Host],
        ip: str,
        metrics: Metrics,
        max_uploads: int = _MAX_UPLOADS,
        slot_wait: float = _SLOT_WAIT,
        send_timeout: float = vortex.SEND_TIMEOUT,
    ) -> None:
        self._upload_address = upload
        self._tcp_address = tcp
        self._held = held
        self._metrics = metrics
        self._slots = UploadSlots(max_uploads, slot_wait)
        self._send_timeout = send_timeout
        self._grpc = grpc.aio.server()
        self._service = _Upload(held, host, ip, lambda: self.tcp_port)
        dfdaemon_pb2_grpc.add_DfdaemonUploadServicer_to_server(self._service, self._grpc)
        self._grpc.add_generic_rpc_handlers((health_handler(),))
        self._tcp: asyncio.Server | None = None
        self.upload_port = 0
        self.tcp_port = 0

    def serve_seeds(self, seeds: Seeds) -> None:
        """Take first fetches from the scheduler (the seed-peer role)."""
        self._service.seeds = seeds

    async def start(self) -> None:
        address = self._upload_address
        host = f"[{address.host}]" if ":" in address.host else address.host
        try:
            self.upload_port = self._grpc.add_insecure_port(f"{host}:{address.port}")
        except RuntimeError as exc:
            raise StartupError(f"dragonfly.upload: cannot listen on {address}: {exc}") from exc
        await self._grpc.start()

        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._connection)

        self._tcp = await bind("dragonfly.vortex", self._tcp_address, protocol)
        self.tcp_port = int(self._tcp.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
        await self._grpc.stop(grace=1.0)
        await self._service.jobs.aclose()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await vortex.serve_connection(
            reader, writer, self._piece, send_timeout=self._send_timeout, slots=self._slots
        )

    async def _piece(self, task_id: str, number: int) -> vortex.ServedPiece | None:
        blob = await self._held.blob(task_id)
        if blob is None or not self._held.whole(blob, number):
            return None
        start, end = DragonflyPieces.of(blob.size).bounds(number)
        digest = vortex.crc32_digest(await self._held.crc32(blob, number))
        self._metrics.dragonfly_upload_bytes.inc(end - start)
        return vortex.ServedPiece(start, end - start, digest, "", self._held.chunks(blob, number))
