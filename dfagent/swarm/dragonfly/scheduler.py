"""Talking to Dragonfly schedulers (API v2): announcing this host, and one AnnouncePeer stream
per download (a peer task).

Nothing here carries a client's credentials: a download is registered with its URL and
nothing else of the client's request."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from dragonfly_api import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from dfagent.errors import DfagentError
from dfagent.metrics import Metrics
from dfagent.swarm.dragonfly.config import SchedulerTLS
from dfagent.tasks import TaskOwner

__all__ = [
    "ANSWER_SECONDS",
    "MAX_PARENTS",
    "Assignment",
    "Parent",
    "PeerStream",
    "SchedulerError",
    "Schedulers",
]

log = logging.getLogger(__name__)

_CALL_SECONDS = 5.0
# How long a registration waits for the scheduler's answer: a scheduler with no parent to name
# yet (its seed peer has just been sent to the origin) tries again for retryBackToSourceLimit x
# retryInterval before it sends the peer to the origin. As dfdaemon's usual scheduleTimeout.
ANSWER_SECONDS = 30.0
# Parents taken from one answer, and followed by one task at once: a Dragonfly scheduler
# sends its candidateParentLimit (4 by default; the manager allows at most 20).
MAX_PARENTS = 20


class SchedulerError(DfagentError):
    """The scheduler could not be reached, refused a call, or ended a stream."""


@dataclass(frozen=True, slots=True)
class Parent:
    """A peer the scheduler offers to download from: its upload gRPC address, and the
    scheduler's own record of it (sent back as is when asking for other parents: the
    scheduler checks every field it requires)."""

    peer_id: str
    host_id: str
    ip: str
    port: int
    record: common_pb2.Peer = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Assignment:
    """The scheduler's answer to a registration: parents to download from, or go to the
    origin (`back_to_source`)."""

    parents: tuple[Parent, ...]
    back_to_source: bool
    reason: str = ""


def parents_of(peers: Sequence[common_pb2.Peer]) -> tuple[Parent, ...]:
    """The first MAX_PARENTS of a scheduler's candidate parents."""
    return tuple(Parent(p.id, p.host.id, p.host.ip, p.host.port, p) for p in peers[:MAX_PARENTS])


class Schedulers:
    """Channels to every configured scheduler; a task always goes to the same one."""

    def __init__(
        self,
        addresses: Sequence[str],
        tls: SchedulerTLS | None,
        metrics: Metrics,
        *,
        answer_within: float,
    ) -> None:
        self._addresses = list(addresses)
        self._answer_within = answer_within
        self._metrics = metrics
        credentials = _credentials(tls) if tls is not None else None
        self._channels = [
            grpc.aio.secure_channel(a, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(a)
            for a in self._addresses
        ]
        self._stubs = [scheduler_pb2_grpc.SchedulerStub(c) for c in self._channels]
        self.reads = TaskOwner("scheduler-reads")  # reads on peer streams (see PeerStream)
        self.reachable = True  # the last call to a scheduler succeeded

    async def aclose(self) -> None:
        await self.reads.aclose()
        await asyncio.gather(*(channel.close() for channel in self._channels))

    def _stub_for(self, task_id: str) -> scheduler_pb2_grpc.SchedulerStub:
        """Rendezvous hashing over the addresses: members agree without talking."""
        best = max(
            range(len(self._addresses)),
            key=lambda i: hashlib.sha256(f"{self._addresses[i]}/{task_id}".encode()).digest(),
        )
        return self._stubs[best]

    async def announce_host(self, host: common_pb2.Host, interval: float) -> None:
        """Announce (or refresh) this host at every scheduler; raises when none accepted it."""
        request = scheduler_pb2.AnnounceHostRequest(host=host, interval=duration(interval))
        results = await asyncio.gather(
            *(self._call("announce_host", s.AnnounceHost(request, timeout=_CALL_SECONDS))
              for s in self._stubs),
            return_exceptions=True,
        )  # fmt: skip
        failures = [r for r in results if isinstance(r, BaseException)]
        if len(failures) == len(results):
            raise SchedulerError(f"no scheduler accepted this host: {failures[0]}")
        for address, result in zip(self._addresses, results, strict=True):
            if isinstance(result, BaseException):
                extra = {"scheduler": address, "error": str(result)}
                log.warning("scheduler refused the host", extra=extra)

    async def delete_host(self, host_id: str) -> None:
        request = scheduler_pb2.DeleteHostRequest(host_id=host_id)
        await asyncio.gather(
            *(self._call("delete_host", s.DeleteHost(request, timeout=_CALL_SECONDS))
              for s in self._stubs),
            return_exceptions=True,
        )  # fmt: skip

    async def _call(self, name: str, call: Awaitable[object]) -> object:
        try:
            result = await call
        except grpc.aio.AioRpcError as exc:
            self.answered(name, "error", reachable=exc.code() != grpc.StatusCode.UNAVAILABLE)
            raise SchedulerError(f"{name}: {exc.code().name}: {exc.details()}") from None
        self.answered(name, "ok")
        return result

    def peer_stream(self, host_id: str, task_id: str, peer_id: str) -> PeerStream:
        return PeerStream(self, self._stub_for(task_id), host_id, task_id, peer_id)

    def answered(self, call: str, result: str, *, reachable: bool = True) -> None:
        self.reachable = reachable
        self._metrics.scheduler_calls.labels(call, result).inc()


class PeerStream:
    """One download's AnnouncePeer stream: register, then report pieces and the outcome."""

    def __init__(
        self,
        schedulers: Schedulers,
        stub: scheduler_pb2_grpc.SchedulerStub,
        host_id: str,
        task_id: str,
        peer_id: str,
    ) -> None:
        self._schedulers = schedulers
        self._stub = stub
        self.host_id = host_id
        self.task_id = task_id
        self.peer_id = peer_id
        self._call: grpc.aio.StreamStreamCall | None = None
        self._writing = asyncio.Lock()  # a gRPC stream takes one write at a time
        self._asking = asyncio.Lock()
        self._reading: asyncio.Task[object] | None = None
        self.closed = False

    async def register(self, download: common_pb2.Download) -> Assignment:
        """Open the stream and register; the first answer (within dragonfly.schedule_timeout)
        says where the bytes come from."""
        self._call = self._stub.AnnouncePeer()
        await self._send(register_peer_request=scheduler_pb2.RegisterPeerRequest(download=download))
        return await self._answer("register_peer")

    async def reschedule(self, known: Sequence[Parent], why: str) -> Assignment:
        """Ask for other parents than `known` (they failed, or are all in use already)."""
        peers = [p.record for p in known]
        request = scheduler_pb2.ReschedulePeerRequest(candidate_parents=peers, description=why)
        async with self._asking:  # one question, one answer, at a time
            await self._send(reschedule_peer_request=request)
            return await self._answer("reschedule_peer")

    async def _answer(self, name: str) -> Assignment:
        assert self._call is not None
        answered = self._schedulers.answered
        within = self._schedulers._answer_within
        try:
            async with asyncio.timeout(within):
                while True:
                    response = await self._read()
                    if response is grpc.aio.EOF:
                        raise SchedulerError("the scheduler ended the peer stream")
                    kind = response.WhichOneof("response")
                    if kind == "normal_task_response":
                        parents = parents_of(response.normal_task_response.candidate_parents)
                        answered(name, "parents")
                        return Assignment(parents, back_to_source=False)
                    if kind == "need_back_to_source_response":
                        answered(name, "back_to_source")
                        why = response.need_back_to_source_response.description
                        return Assignment((), back_to_source=True, reason=why)
                    if kind == "empty_task_response":
                        answered(name, "empty")
                        return Assignment((), back_to_source=True, reason="empty task")
                    # metadata_only answers a metadata-only registration, which this agent never
                    # sends; anything else is from a newer API: keep reading.
        except TimeoutError:
            answered(name, "timeout")
            raise SchedulerError(f"no answer from the scheduler within {within:g}s") from None
        except grpc.aio.AioRpcError as exc:
            answered(name, "error", reachable=exc.code() != grpc.StatusCode.UNAVAILABLE)
            raise SchedulerError(f"{exc.code().name}: {exc.details()}") from None

    async def _read(self) -> object:
        """The scheduler's next message. A read that outlives its caller's patience stays
        pending for the next caller: cancelling a read would end the whole gRPC call."""
        assert self._call is not None
        if self._reading is None:
            read = self._call.read()
            self._reading = self._schedulers.reads.spawn(read, name="scheduler-read")
        reading = self._reading
        try:
            return await asyncio.shield(reading)
        finally:
            if reading.done():
                self._reading = None

    async def started(self, *, back_to_source: bool) -> None:
        if back_to_source:
            request = scheduler_pb2.DownloadPeerBackToSourceStartedRequest()
            await self._send(download_peer_back_to_source_started_request=request)
        else:
            await self._send(
                download_peer_started_request=scheduler_pb2.DownloadPeerStartedRequest()
            )

    async def piece_finished(self, piece: common_pb2.Piece) -> None:
        """A Dragonfly piece is whole here; from a parent or (traffic type) from the origin."""
        if piece.traffic_type == common_pb2.BACK_TO_SOURCE:
            request = scheduler_pb2.DownloadPieceBackToSourceFinishedRequest(piece=piece)
            await self._send(download_piece_back_to_source_finished_request=request)
        else:
            request = scheduler_pb2.DownloadPieceFinishedRequest(piece=piece)
            await self._send(download_piece_finished_request=request)

    async def piece_failed(self, number: int, parent: Parent) -> None:
        request = scheduler_pb2.DownloadPieceFailedRequest(
            piece_number=number, parent_id=parent.peer_id, temporary=True
        )
        await self._send(download_piece_failed_request=request)

    async def finished(self, *, back_to_source: bool) -> None:
        """Every piece is here: the scheduler may send children for all of it."""
        if back_to_source:
            request = scheduler_pb2.DownloadPeerBackToSourceFinishedRequest()
            await self._send(download_peer_back_to_source_finished_request=request)
        else:
            await self._send(
                download_peer_finished_request=scheduler_pb2.DownloadPeerFinishedRequest()
            )
        await self.close()

    async def failed(self, why: str, *, back_to_source: bool) -> None:
        if back_to_source:
            request = scheduler_pb2.DownloadPeerBackToSourceFailedRequest(description=why)
            await self._send(download_peer_back_to_source_failed_request=request)
        else:
            request = scheduler_pb2.DownloadPeerFailedRequest(description=why)
            await self._send(download_peer_failed_request=request)
        await self.close()

    async def close(self) -> None:
        if self._call is not None and not self.closed:
            self.closed = True
            with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
                async with self._writing:
                    await self._call.done_writing()
            # Let the scheduler take in what was written before the stream goes.
            with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
                async with asyncio.timeout(_CALL_SECONDS):
                    while await self._read() is not grpc.aio.EOF:
                        pass
            self._call.cancel()

    async def _send(self, **message: object) -> None:
        if self._call is None or self.closed:
            raise SchedulerError("the peer stream is closed")
        request = scheduler_pb2.AnnouncePeerRequest(
            host_id=self.host_id, task_id=self.task_id, peer_id=self.peer_id, **message
        )
        try:
            async with self._writing:
                await self._call.write(request)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
            # Writing to a stream that has ended raises InvalidStateError; the call's status
            # says why. A scheduler gone away shows here first: the stream of a download
            # under way breaks, and so does the next registration, before any answer.
            self.closed = True
            why = str(exc)
            if self._call.done():
                code = await self._call.code()
                why = f"{code.name}: {await self._call.details()}"
                reachable = code != grpc.StatusCode.UNAVAILABLE
                self._schedulers.answered("announce_peer", "error", reachable=reachable)
            raise SchedulerError(f"the peer stream broke: {why}") from None


def duration(seconds: float) -> Duration:
    value = Duration()
    value.FromNanoseconds(int(seconds * 1e9))
    return value


def timestamp_now() -> Timestamp:
    value = Timestamp()
    value.GetCurrentTime()
    return value


def _credentials(tls: SchedulerTLS) -> grpc.ChannelCredentials:
    def read(path: str | None) -> bytes | None:
        return None if path is None else Path(path).read_bytes()

    return grpc.ssl_channel_credentials(read(tls.ca), read(tls.key), read(tls.cert))
