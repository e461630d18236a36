"""The peer server: pieces for other agents (held ones, and ones still arriving here, passed on
as their bytes come in), the directory for the blobs this agent is home for, and completions
other agents ask for (a preheat spreading through the swarm). Every
request must carry the cluster token (`Authorization: Bearer ...`) when one is configured;
with `peer.tls` the TLS handshake already demands a certificate from the cluster CA."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from aiohttp import web
from yarl import URL

from dfagent.configtypes import ListenAddress
from dfagent.core.digest import Digest, InvalidDigest
from dfagent.core.limits import MAX_BLOB_BYTES, Pacer
from dfagent.engine.fetcher import FileSegment
from dfagent.errors import BadRequest, DfagentError
from dfagent.metrics import Metrics
from dfagent.sendfile import send_segment
from dfagent.serving import bind, drain
from dfagent.storage.store import PieceStore
from dfagent.swarm.client import MAX_PIECES_PER_REQUEST
from dfagent.swarm.directory import PARENT_WAIT, UNSEEN_PARENT_WAIT, Directory
from dfagent.swarm.slots import UploadSlots

__all__ = ["Arrivals", "Completions", "PeerServer"]

log = logging.getLogger(__name__)


_PACED_SLICE = 64 * 1024  # with an upload cap, bytes sent at a time

# Bounds of what a peer may ask; beyond them a request is broken or hostile (400), and would
# only fill the directory and hold the event loop.
_MOST_PIECES = MAX_BLOB_BYTES  # a blob has no more pieces than bytes
_MOST_PIECES_DIGITS = len(str(_MOST_PIECES))
_MAX_NAME_CHARS = 512  # an origin (scheme://host:port), a peer (host:port), a layout key
_MAX_URL_CHARS = 8192
_FIXED_LAYOUT = re.compile(r"fixed:([1-9][0-9]{0,19})")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


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

    async def begins(self, digest_hex: str, index: int, within: float) -> bool:
        """Whether piece `index` of a blob is here or arriving, waiting up to `within` seconds
        for it to begin to arrive."""
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
        self._pacer = Pacer(upload_bandwidth)
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
        # aiohttp decodes header bytes that are not UTF-8 to surrogates: get the bytes back.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if self._token is not None and not hmac.compare_digest(given, self._token):
            self._metrics.peer_requests.labels("refused").inc()
            return web.Response(status=401, text="this agent needs the cluster token\n")
        try:
            return await self._route(request)
        except BadRequest as exc:
            return _refused(request, 400, f"bad request: {exc}")
        except web.HTTPRequestEntityTooLarge:
            return _refused(request, 413, f"the body is over {request.client_max_size} bytes")

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        parts = request.path.strip("/").split("/")
        match request.method, parts:
            case "GET", ["v1", "pieces", digest, index]:
                return await self._piece(request, _path_digest(digest), _index(index, "index"))
            case "GET", ["v1", "progress", digest]:
                return web.json_response(self._progress(_path_digest(digest), request.query))
            case "GET", ["v1", "blobs", digest]:
                return self._describe(_path_digest(digest), request.query.get("origin", ""))
            case "POST", ["v1", "lookup"]:
                return web.json_response(self._lookup(await _json_object(request)))
            case "POST", ["v1", "recorded"]:
                return web.json_response(self._recorded(await _json_object(request)))
            case "POST", ["v1", "announce"]:
                return web.json_response(self._announce(await _json_object(request)))
            case "POST", ["v1", "complete"]:
                return await self._complete(await _json_object(request))
            case "GET", ["v1", "complete", digest]:
                return await self._completion(_path_digest(digest))
            case "POST", ["v1", "release"]:
                self._release(await _json_object(request))
                return web.json_response({})
            case "POST", ["v1", "report"]:
                self._report(await _json_object(request))
                return web.json_response({})
        return web.Response(status=404, text="no such endpoint\n")

    async def _send_paced(
        self, request: web.BaseRequest, segment: FileSegment, response: web.StreamResponse
    ) -> None:
        """The segment, under the upload cap if there is one: in slices spread over the time
        the cap allows, once the headers are out. Pacing a whole piece before its headers would
        leave the requester waiting in silence (it asks a second holder after the hedge delay,
        and the piece is sent twice) and then put the piece on the link in one burst."""
        if self._pacer.rate is None:
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
        response = await self._piece_here(request, digest, index)
        # A member sent here by its home for a piece that this agent, its parent in the
        # piece's stripe tree, is about to fetch (Directory._from_parent), or filling the
        # whole blob from its parents while this agent may be about to begin it too
        # (Swarm.prove_whole, `tree`): wait a moment for it.
        reading = self._store.loaded(digest.hex) is not None
        if (
            response is None
            and self.arrivals is not None
            and (reading or request.query.get("tree") == "1")
        ):
            with self._metrics.peer_early_requests_waiting.track_inprogress():
                arrived = await self._begins(digest, index, reading)
            outcome = "arrived" if arrived else "not_arrived"
            self._metrics.peer_early_requests.labels(outcome).inc()
            if arrived:
                response = await self._piece_here(request, digest, index)
        if response is None:
            return web.Response(status=404, text="piece neither held nor arriving here\n")
        return response

    async def _begins(self, digest: Digest, index: int, reading: bool) -> bool:
        """Whether the piece begins to arrive here within PARENT_WAIT; within
        UNSEEN_PARENT_WAIT while this agent has not begun to read the blob (a member reading
        it alone in a large swarm would otherwise wait the whole time for nobody, in every
        stripe)."""
        assert self.arrivals is not None
        if reading:
            return await self.arrivals.begins(digest.hex, index, PARENT_WAIT)
        if await self.arrivals.begins(digest.hex, index, UNSEEN_PARENT_WAIT):
            return True
        if self._store.loaded(digest.hex) is None:
            return False
        return await self.arrivals.begins(digest.hex, index, PARENT_WAIT - UNSEEN_PARENT_WAIT)

    async def _piece_here(
        self, request: web.BaseRequest, digest: Digest, index: int
    ) -> web.StreamResponse | None:
        """The piece, held here (or staged: see Swarm.prove_whole) or passed on as it
        arrives; None if it is neither."""
        blob = self._store.loaded(digest.hex) or await self._store.open_blob(digest)
        if blob is not None and (blob.has(index) or index in blob.staged):
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
            return None
        return await self._upload(
            request, "relay", arriving.length, partial(_relay, self._pacer, arriving)
        )

    def _progress(self, digest: Digest, query: Mapping[str, str]) -> dict[str, int]:
        """Bytes of the blob that have reached this agent so far, and with `piece` asked, of
        that piece."""
        self._metrics.peer_requests.labels("progress").inc()
        blob = self._store.loaded(digest.hex)
        progress = {"arrived": 0 if blob is None else blob.arrived}
        if "piece" in query:
            index = _index(query["piece"], "piece")
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

    async def _complete(self, body: _Fields) -> web.StreamResponse:
        if self.completions is None:
            return web.Response(status=503, text="not ready\n")
        digest = body.digest("digest", prefixed=True)
        size = body.number("size", MAX_BLOB_BYTES + 1)
        state, error = await self.completions.start(digest, size, body.url("url"))
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

    def _lookup(self, body: _Fields) -> dict[str, Any]:
        self._metrics.peer_requests.labels("lookup").inc()
        book = _Book.read(body)
        answers = self._directory.lookup(
            book.digest,
            book.origin,
            book.size,
            book.layout,
            indices=body.indices("pieces", book.pieces),
            requester=body.text("requester"),
            stalled=body.optional_text("stalled"),
        )
        return {
            "pieces": {
                str(index): {
                    "sha256": a.sha256.hex() if a.sha256 else None,
                    "holders": list(a.holders),
                    "fetch": a.fetch,
                    "fetching": a.fetching,
                    "wait": a.wait,
                }
                for index, a in answers.items()
            }
        }

    def _recorded(self, body: _Fields) -> dict[str, Any]:
        """The sha256 recorded for each piece asked about; with `holder` and `holding` (the
        sha256 of each piece it received from a relay), the holder is also recorded for
        those that match (`held`), as an announcement would."""
        self._metrics.peer_requests.labels("recorded").inc()
        book = _Book.read(body)
        indices = body.indices("pieces", book.pieces)
        holder = body.optional_text("holder")
        holding = body.sha256s("holding", book.pieces) if holder is not None else {}
        recorded = self._directory.recorded(
            book.digest, book.origin, book.size, book.layout, indices
        )
        answer: dict[str, Any] = {
            "pieces": {str(i): sha.hex() if sha else None for i, sha in recorded.items()}
        }
        if holder is not None:
            answer["held"] = self._directory.check_in(
                book.digest, book.origin, book.size, book.layout, holder=holder, pieces=holding
            )
        return answer

    def _announce(self, body: _Fields) -> dict[str, Any]:
        """Every entry is checked before any is recorded: a request is taken whole or refused."""
        self._metrics.peer_requests.labels("announce").inc()
        holder = body.text("holder")
        announced = []
        for entry in body.objects("blobs"):
            book = _Book.read(entry)
            announced.append((book, entry.sha256s("pieces", book.pieces), entry.flag("verified")))
        if sum(len(pieces) for _, pieces, _ in announced) > MAX_PIECES_PER_REQUEST:
            raise BadRequest(f"blobs: at most {MAX_PIECES_PER_REQUEST} pieces in one request")
        refused = {}
        for book, pieces, verified in announced:
            bad = self._directory.announce(
                book.digest,
                book.origin,
                book.size,
                book.layout,
                holder=holder,
                pieces=pieces,
                verified=verified,
            )
            if bad:
                refused[book.digest] = bad
        return {"refused": refused}

    def _release(self, body: _Fields) -> None:
        self._directory.release(
            body.digest("digest").hex,
            body.text("origin"),
            body.indices("pieces", _MOST_PIECES),
            body.text("requester"),
        )

    def _report(self, body: _Fields) -> None:
        self._directory.drop_holder(
            body.digest("digest").hex, body.number("index", _MOST_PIECES), body.text("holder")
        )


@dataclass(frozen=True, slots=True)
class _Book:
    """The book of the directory a request is about: a blob as an origin gave it, cut into
    pieces as `layout` says."""

    digest: str
    origin: str
    size: int
    layout: str

    @classmethod
    def read(cls, body: _Fields) -> _Book:
        layout = body.text("layout")
        if layout.startswith("fixed:") and _FIXED_LAYOUT.fullmatch(layout) is None:
            raise BadRequest("layout: fixed:<piece size in bytes>, a positive whole number")
        return cls(
            body.digest("digest").hex,
            body.text("origin"),
            body.number("size", MAX_BLOB_BYTES + 1),
            layout,
        )

    @property
    def pieces(self) -> int:
        """How many pieces the blob has at most: cut into fixed-size pieces, as many as its
        size needs; cut along nydus chunks, no more than it has bytes (no piece is empty)."""
        fixed = _FIXED_LAYOUT.fullmatch(self.layout)
        return -(-self.size // int(fixed.group(1))) if fixed else self.size


class _Fields:
    """A JSON object from a peer, read field by field: a field that is missing, of the wrong
    type or out of bounds is a BadRequest naming it (`path` names the object within the body;
    empty for the body itself)."""

    def __init__(self, value: object, path: str = "") -> None:
        if not isinstance(value, dict):
            raise BadRequest(f"{path or 'the body'} must be a JSON object")
        self._value: dict[str, object] = value
        self._path = path

    def _where(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def _field(self, name: str) -> object:
        if name not in self._value:
            raise BadRequest(f"{self._where(name)}: required")
        return self._value[name]

    def text(self, name: str, limit: int = _MAX_NAME_CHARS) -> str:
        value = self._field(name)
        if not isinstance(value, str) or len(value) > limit:
            raise BadRequest(f"{self._where(name)}: must be a string of at most {limit} characters")
        return value

    def optional_text(self, name: str) -> str | None:
        return None if self._value.get(name) is None else self.text(name)

    def flag(self, name: str) -> bool:
        value = self._field(name)
        if not isinstance(value, bool):
            raise BadRequest(f"{self._where(name)}: must be true or false")
        return value

    def number(self, name: str, below: int) -> int:
        return _whole(self._field(name), self._where(name), below)

    def digest(self, name: str, *, prefixed: bool = False) -> Digest:
        """A sha256 digest, written `sha256:<hex>` when `prefixed`, else its hex alone."""
        text = self.text(name)
        try:
            return Digest.parse(text if prefixed else f"sha256:{text}")
        except InvalidDigest as exc:
            raise BadRequest(f"{self._where(name)}: {exc}") from None

    def url(self, name: str) -> URL:
        text = self.text(name, _MAX_URL_CHARS)
        try:
            url = URL(text)
        except ValueError as exc:
            raise BadRequest(f"{self._where(name)}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise BadRequest(f"{self._where(name)}: must be an http(s) URL")
        return url

    def indices(self, name: str, below: int) -> list[int]:
        """Piece indices, each below `below` (and at most MAX_PIECES_PER_REQUEST)."""
        value, where = self._field(name), self._where(name)
        if not isinstance(value, list) or len(value) > MAX_PIECES_PER_REQUEST:
            raise BadRequest(f"{where}: must be a list of at most {MAX_PIECES_PER_REQUEST} indices")
        return [_whole(index, f"{where}[{n}]", below) for n, index in enumerate(value)]

    def sha256s(self, name: str, below: int) -> dict[int, bytes]:
        """{piece index: sha256}, written {"<index>": "<64 hex digits>"}."""
        value, where = self._field(name), self._where(name)
        if not isinstance(value, dict) or len(value) > MAX_PIECES_PER_REQUEST:
            raise BadRequest(
                f'{where}: must be {{"<index>": "<sha256>", ...}}, {MAX_PIECES_PER_REQUEST} at most'
            )
        pieces = {}
        for key, sha256 in value.items():
            index = _index(key, f"{where} key")
            if index >= below:
                raise BadRequest(f"{where}: piece {index} is beyond the blob's {below} pieces")
            if not isinstance(sha256, str) or _SHA256_HEX.fullmatch(sha256) is None:
                raise BadRequest(f"{where}.{index}: must be a sha256, 64 lower-case hex digits")
            pieces[index] = bytes.fromhex(sha256)
        return pieces

    def objects(self, name: str) -> list[_Fields]:
        value, where = self._field(name), self._where(name)
        if not isinstance(value, list) or len(value) > MAX_PIECES_PER_REQUEST:
            raise BadRequest(f"{where}: must be a list of at most {MAX_PIECES_PER_REQUEST} objects")
        return [_Fields(entry, f"{where}[{n}]") for n, entry in enumerate(value)]


def _refused(request: web.BaseRequest, status: int, reason: str) -> web.Response:
    log.warning(
        "peer request refused",
        extra={"peer": request.remote, "path": request.path, "error": reason},
    )
    return web.Response(status=status, text=f"{reason}\n")


async def _json_object(request: web.BaseRequest) -> _Fields:
    """The request's body, a JSON object (one over aiohttp's client_max_size, 1 MiB, raises
    HTTPRequestEntityTooLarge)."""
    try:
        value = json.loads(await request.read())
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None
    return _Fields(value)


def _whole(value: object, where: str, below: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < below:
        raise BadRequest(f"{where}: must be a whole number, at least 0 and below {below}")
    return value


def _index(text: str, where: str) -> int:
    """A piece index written in a path, a query or a JSON key: decimal digits only."""
    if not (text.isascii() and text.isdigit() and len(text) <= _MOST_PIECES_DIGITS):
        shown = text if len(text) <= 24 else text[:21] + "..."
        raise BadRequest(f"{where}: a piece index is a whole number, got {shown!r}")
    return _whole(int(text), where, _MOST_PIECES)


def _path_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except InvalidDigest as exc:
        raise BadRequest(str(exc)) from None


async def _relay(pacer: Pacer, arriving: ArrivingPiece, response: web.StreamResponse) -> None:
    """Pass a piece on while it arrives, in slices as the upload cap allows (views of the
    arriving piece's buffer, which is never resized, so nothing is copied here)."""
    async for part in arriving.relay():
        for offset in range(0, len(part), _PACED_SLICE):
            data = part[offset : offset + _PACED_SLICE]
            await pacer.take(len(data))
            await response.write(data)
