"""The peer server: pieces for other agents (held ones, and ones still arriving here, passed on
as their bytes come in), the directory for the blobs this agent is home for, and completions
other agents ask for (a preheat spreading through the swarm). Every
request must carry the cluster token (`Authorization: Bearer ...`) when one is configured;
with `peer.tls` the TLS handshake already demands a certificate from the cluster CA."""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any, Protocol

from aiohttp import web
from yarl import URL

from dfagent.configtypes import ListenAddress
from dfagent.core.digest import Digest, InvalidDigest
from dfagent.engine.fetcher import FileSegment
from dfagent.errors import DfagentError
from dfagent.metrics import Metrics
from dfagent.sendfile import send_segment
from dfagent.serving import bind, drain
from dfagent.storage.store import PieceStore
from dfagent.swarm.directory import Directory
from dfagent.swarm.slots import UploadSlots

__all__ = ["Arrivals", "Completions", "PeerServer"]

log = logging.getLogger(__name__)


_PACED_SLICE = 64 * 1024  # with an upload cap, bytes sent at a time


class _Pacer:
    """Keeps total uploads under `rate` bytes per second (None: no cap)."""

    def __init__(self, rate: int | None) -> None:
        self._rate = rate
        self._next = time.monotonic()

    @property
    def pacing(self) -> bool:
        return bool(self._rate)

    async def take(self, count: int) -> None:
        if not self._rate:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + count / self._rate
        if start > now:
            await asyncio.sleep(start - now)


class Completions(Protocol):
    """Fetching whole blobs on a peer's request; each answer is (state, error)."""

    async def start(self, digest: Digest, size: int, url: URL) -> tuple[str, str | None]: ...

    async def state(self, digest: Digest) -> tuple[str, str | None]: ...


class ArrivingPiece(Protocol):
    """A piece on its way into this agent (see InflightPiece)."""

    @property
    def length(self) -> int: ...

    def relay(self) -> AsyncIterator[memoryview]: ...


class Arrivals(Protocol):
    """Pieces arriving at this agent, for peers told to take them from here meanwhile."""

    def arriving(self, digest_hex: str, index: int, origin: str) -> ArrivingPiece | None:
        """Piece `index` of a blob while it arrives here with `origin`'s bytes, if it does."""
        ...

    def piece_progress(self, digest_hex: str, index: int) -> int:
        """How many bytes of piece `index` of a blob are here, held or arriving."""
        ...


class PeerServer:
    def __init__(
        self,
        listen: ListenAddress,
        token: str | None,
        store: PieceStore,
        directory: Directory,
        metrics: Metrics,
        *,
        max_uploads: int,
        slot_wait: float,
        upload_bandwidth: int | None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._listen = listen
        self._tls = tls
        self._token = f"Bearer {token}".encode() if token is not None else None
        self._store = store
        self._directory = directory
        self._metrics = metrics
        self._slots = UploadSlots(max_uploads, slot_wait)
        self._pacer = _Pacer(upload_bandwidth)
        self._server: asyncio.Server | None = None
        self._http: web.Server | None = None
        self.completions: Completions | None = None  # set once the engine runs
        self.arrivals: Arrivals | None = None  # likewise

    def engine_ready(self, completions: Completions, arrivals: Arrivals) -> None:
        self.completions = completions
        self.arrivals = arrivals

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        # A peer that hangs up cancels its handler: a relay waiting for bytes that stopped
        # arriving would otherwise hold its upload slot until they came.
        self._http = web.Server(self._handle, access_log=None, handler_cancellation=True)
        self._server = await bind("peer", self._listen, self._http, ssl=self._tls)

    async def stop(self) -> None:
        await drain(self._server, self._http, 2.0)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if self._token is not None and not hmac.compare_digest(given, self._token):
            self._metrics.peer_requests.labels("refused").inc()
            return web.Response(status=401, text="this agent needs the cluster token\n")
        parts = request.path.strip("/").split("/")
        try:
            match request.method, parts:
                case "GET", ["v1", "pieces", digest, index]:
                    return await self._piece(request, Digest.parse(digest), int(index))
                case "GET", ["v1", "progress", digest]:
                    return web.json_response(self._progress(Digest.parse(digest), request.query))
                case "GET", ["v1", "blobs", digest]:
                    return self._describe(Digest.parse(digest), request.query.get("origin", ""))
                case "POST", ["v1", "lookup"]:
                    return web.json_response(self._lookup(await request.json()))
                case "POST", ["v1", "recorded"]:
                    return web.json_response(self._recorded(await request.json()))
                case "POST", ["v1", "announce"]:
                    return web.json_response(self._announce(await request.json()))
                case "POST", ["v1", "complete"]:
                    return await self._complete(await request.json())
                case "GET", ["v1", "complete", digest]:
                    return await self._completion(Digest.parse(digest))
                case "POST", ["v1", "release"]:
                    body = await request.json()
                    self._directory.release(
                        Digest.parse("sha256:" + body["digest"]).hex,
                        str(body["origin"]),
                        [int(i) for i in body["pieces"]],
                        str(body["requester"]),
                    )
                    return web.json_response({})
                case "POST", ["v1", "report"]:
                    body = await request.json()
                    self._directory.drop_holder(body["digest"], int(body["index"]), body["holder"])
                    return web.json_response({})
        except (InvalidDigest, ValueError, KeyError, TypeError) as exc:
            return web.Response(status=400, text=f"bad request: {exc}\n")
        return web.Response(status=404, text="no such endpoint\n")

    async def _send_paced(
        self, request: web.BaseRequest, segment: FileSegment, response: web.StreamResponse
    ) -> None:
        """The segment, under the upload cap if there is one: in slices spread over the time
        the cap allows, once the headers are out. Pacing a whole piece before its headers would
        leave the requester waiting in silence (it asks a second holder after the hedge delay,
        and the piece is sent twice) and then put the piece on the link in one burst."""
        if not self._pacer.pacing:
            await send_segment(request, response, segment)
            return
        end = segment.offset + segment.count
        for offset in range(segment.offset, end, _PACED_SLICE):
            count = min(_PACED_SLICE, end - offset)
            await self._pacer.take(count)
            await send_segment(request, response, FileSegment(segment.blob, offset, count))

    async def _piece(
        self, request: web.BaseRequest, digest: Digest, index: int
    ) -> web.StreamResponse:
        blob = self._store.loaded(digest.hex) or await self._store.open_blob(digest)
        if blob is not None and blob.has(index):
            start, end = blob.layout.bounds(index)
            segment = FileSegment(blob, start, end - start)
            with blob.pinned():
                return await self._upload(
                    request, "piece", segment.count, partial(self._send_paced, request, segment)
                )
        origin = request.query.get("origin", "")
        arriving = (
            None if self.arrivals is None else self.arrivals.arriving(digest.hex, index, origin)
        )
        if arriving is None:
            return web.Response(status=404, text="piece neither held nor arriving here\n")
        return await self._upload(
            request, "relay", arriving.length, partial(_relay, self._pacer, arriving)
        )

    def _progress(self, digest: Digest, query: Mapping[str, str]) -> dict[str, int]:
        """Bytes of the blob that have reached this agent so far, and with `piece` asked, of
        that piece."""
        blob = self._store.loaded(digest.hex)
        progress = {"arrived": 0 if blob is None else blob.arrived}
        if "piece" in query:
            index = int(query["piece"])
            progress["piece"] = (
                0 if self.arrivals is None else self.arrivals.piece_progress(digest.hex, index)
            )
        return progress

    async def _upload(
        self,
        request: web.BaseRequest,
        kind: str,
        length: int,
        send: Callable[[web.StreamResponse], Awaitable[None]],
    ) -> web.StreamResponse:
        """Send a piece's `length` bytes (`kind`: held here, or passed on as it arrives),
        once one of `peer.max_uploads` upload slots is free (429 if none frees up soon)."""
        if not await self._slots.take():
            self._metrics.peer_requests.labels("busy").inc()
            return web.Response(status=429, text="too many uploads; ask another holder\n")
        try:
            response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
            response.content_length = length
            try:
                # A hedged request that lost the race hangs up, maybe before the headers.
                await response.prepare(request)
                await send(response)
            except (DfagentError, OSError):
                if request.transport is not None:
                    request.transport.close()
                return response
            self._metrics.uploaded_bytes.inc(length)
            self._metrics.peer_requests.labels(kind).inc()
            return response
        finally:
            self._slots.give()

    async def _complete(self, body: dict[str, Any]) -> web.StreamResponse:
        if self.completions is None:
            return web.Response(status=503, text="not ready\n")
        url = URL(str(body["url"]))
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError("url must be an http(s) URL")
        digest = Digest.parse(str(body["digest"]))
        state, error = await self.completions.start(digest, int(body["size"]), url)
        return web.json_response({"state": state, "error": error})

    async def _completion(self, digest: Digest) -> web.StreamResponse:
        if self.completions is None:
            return web.Response(status=503, text="not ready\n")
        state, error = await self.completions.state(digest)
        return web.json_response({"state": state, "error": error})

    def _describe(self, digest: Digest, origin: str) -> web.StreamResponse:
        known = self._directory.describe(digest.hex, origin)
        if known is None:
            return web.json_response({}, status=404)
        return web.json_response({"size": known[0], "layout": known[1]})

    def _lookup(self, body: dict[str, Any]) -> dict[str, Any]:
        self._metrics.peer_requests.labels("lookup").inc()
        answers = self._directory.lookup(
            Digest.parse("sha256:" + body["digest"]).hex,
            str(body["origin"]),
            int(body["size"]),
            str(body["layout"]),
            indices=[int(i) for i in body["pieces"]],
            requester=str(body["requester"]),
            stalled=None if body.get("stalled") is None else str(body["stalled"]),
        )
        return {
            "pieces": {
                str(index): {
                    "sha256": a.sha256.hex() if a.sha256 else None,
                    "holders": list(a.holders),
                    "fetch": a.fetch,
                    "fetching": a.fetching,
                }
                for index, a in answers.items()
            }
        }

    def _recorded(self, body: dict[str, Any]) -> dict[str, Any]:
        recorded = self._directory.recorded(
            Digest.parse("sha256:" + body["digest"]).hex,
            str(body["origin"]),
            int(body["size"]),
            str(body["layout"]),
            [int(i) for i in body["pieces"]],
        )
        return {"pieces": {str(i): sha.hex() if sha else None for i, sha in recorded.items()}}

    def _announce(self, body: dict[str, Any]) -> dict[str, Any]:
        self._metrics.peer_requests.labels("announce").inc()
        refused = {}
        for entry in body["blobs"]:
            digest = Digest.parse("sha256:" + entry["digest"]).hex
            pieces = {int(i): bytes.fromhex(sha) for i, sha in entry["pieces"].items()}
            bad = self._directory.announce(
                digest,
                str(entry["origin"]),
                int(entry["size"]),
                str(entry["layout"]),
                holder=str(body["holder"]),
                pieces=pieces,
                verified=bool(entry["verified"]),
            )
            if bad:
                refused[digest] = bad
        return {"refused": refused}


async def _relay(pacer: _Pacer, arriving: ArrivingPiece, response: web.StreamResponse) -> None:
    """Pass a piece on while it arrives, in slices as the upload cap allows (views of the
    arriving piece's buffer, which is never resized, so nothing is copied here)."""
    async for part in arriving.relay():
        for offset in range(0, len(part), _PACED_SLICE):
            data = part[offset : offset + _PACED_SLICE]
            await pacer.take(len(data))
            await response.write(data)
