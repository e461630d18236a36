"""Talking to other agents: directory lookups and announcements at a blob's home, piece
downloads from holders. Only the cluster token goes to peers, never a client's credentials."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlencode

import aiohttp

from dfagent.core.limits import MAX_BLOB_BYTES, PaceWatch
from dfagent.errors import DfagentError
from dfagent.swarm.directory import Answer

__all__ = [
    "MAX_PIECES_PER_REQUEST",
    "MalformedAnswer",
    "PeerClient",
    "PeerError",
]

_PATIENT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=5)
# A blob's home has no stand-in: a request to it that fails sends its pieces to the origin
# (or leaves an announcement unheard, and its waiters to the origin). So a connection to a home
# gets this long, not the fail-fast peer.connect_timeout: its SYN may queue behind a saturated
# uplink at either end, or be lost and sent again after a second.
HOME_CONNECT_SECONDS = 2.0
# A home that did not connect (or answer) even so is given up on at once for this long.
HOME_DOWN_SECONDS = 10.0
# Pieces one request names at most, which a home holds its peers to. The engine asks about a
# read-ahead window at a time (at most a few hundred pieces), and announces in batches.
MAX_PIECES_PER_REQUEST = 2048
# A peer that sends less than this of a piece in a whole peer.read_timeout is trickling: each
# byte would restart the read timeout, and hold the reader (and every reader waiting for the
# piece) for as long as the peer likes. Half a paced slice: a holder under an upload cap sends
# 64 KiB at a time, and one that sends a slice per read timeout is slow, not trickling.
_MIN_BYTES_PER_READ_TIMEOUT = 32 * 1024
# An answer to a lookup, announcement or the like: far above any the engine's requests get (at
# most MAX_PIECES_PER_REQUEST pieces), so only a hostile or broken peer reaches it.
_MAX_ANSWER_BYTES = 8 * 1024 * 1024
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")


class PeerError(DfagentError):
    """A peer could not be reached, refused, or answered something unusable."""

    def __init__(self, message: str, *, busy: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.busy = busy
        self.unreachable = unreachable  # no answer at all (refused, timed out, reset)


class MalformedAnswer(PeerError):
    """A peer answered, but not as the protocol says (a missing field, a wrong type)."""

    def __init__(self, peer: str, kind: str, why: str) -> None:
        super().__init__(f"{peer} answered a malformed {kind}: {why}")
        self.peer = peer
        self.kind = kind


class PeerClient:
    def __init__(
        self,
        token: str | None,
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        self._tls = tls
        self._scheme = "https" if tls is not None else "http"
        self._read_timeout = read_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._home_timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=max(connect_timeout, HOME_CONNECT_SECONDS),
            sock_read=read_timeout,
        )
        self._session: aiohttp.ClientSession | None = None
        self.unreachable: set[str] = set()  # peers whose last contact failed
        self._home_down_until: dict[str, float] = {}  # homes failed even patiently (monotonic)

    async def __aenter__(self) -> PeerClient:
        self._session = aiohttp.ClientSession(
            timeout=self._timeout,
            headers=self._headers,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            connector=aiohttp.TCPConnector(
                limit=256, limit_per_host=16, ssl=self._tls if self._tls is not None else True
            ),
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _json(
        self,
        method: str,
        peer: str,
        path: str,
        body: Any = None,
        limits: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        assert self._session is not None
        try:
            async with self._session.request(
                method, f"{self._scheme}://{peer}{path}", json=body, timeout=limits or self._timeout
            ) as r:
                self.unreachable.discard(peer)
                if r.status == 404:
                    return None
                if r.status != 200:
                    raise PeerError(f"{peer} answered {r.status} to {path}")
                return json.loads(await _read_at_most(r.content, _MAX_ANSWER_BYTES))
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as exc:
            gone = isinstance(exc, aiohttp.ClientConnectionError | TimeoutError)
            if gone:
                self.unreachable.add(peer)
            raise PeerError(f"{peer}: {exc or type(exc).__name__}", unreachable=gone) from exc

    async def _ask_home(self, method: str, home: str, path: str, body: Any = None) -> Any:
        """`_json` for a request to a blob's home: patient to connect (HOME_CONNECT_SECONDS),
        unless it failed so within HOME_DOWN_SECONDS (then fail fast until it answers)."""
        patient = time.monotonic() >= self._home_down_until.get(home, 0.0)
        try:
            answer = await self._json(
                method, home, path, body, limits=self._home_timeout if patient else None
            )
        except PeerError as exc:
            if exc.unreachable and patient:
                self._home_down_until[home] = time.monotonic() + HOME_DOWN_SECONDS
            raise
        self._home_down_until.pop(home, None)
        return answer

    async def describe(self, home: str, digest_hex: str, origin: str) -> tuple[int, str] | None:
        """(size, layout key) of a blob as `origin` gave it, if `home` knows."""
        path = f"/v1/blobs/sha256:{digest_hex}?{urlencode({'origin': origin})}"
        answer = await self._ask_home("GET", home, path)
        if answer is None:
            return None
        with _reading(home, "description"):
            return _size(_item(answer, "size"), "size"), _text(_item(answer, "layout"), "layout")

    async def progress(self, peer: str, digest_hex: str, index: int) -> int:
        """How many bytes of piece `index` of a blob have reached `peer` so far (of the whole
        blob, from an agent that counts only those). Patient: it waits longer than the
        fail-fast connect timeout, since a busy peer on a loaded host may take a while to
        answer, and only a peer that truly does not answer counts as dead."""
        path = f"/v1/progress/sha256:{digest_hex}?piece={index}"
        answer = await self._json("GET", peer, path, limits=_PATIENT)
        if answer is None:
            raise PeerError(f"{peer} cannot tell its progress")
        with _reading(peer, "progress"):
            name = "piece" if isinstance(answer, dict) and "piece" in answer else "arrived"
            return _size(_item(answer, name), name)

    async def lookup(self, home: str, body: dict[str, Any]) -> dict[int, Answer]:
        """What `home` says of each piece `body` asks about (see Directory.lookup)."""
        answer = await self._ask_home("POST", home, "/v1/lookup", body)
        if answer is None:
            raise PeerError(f"{home} has no directory")
        with _reading(home, "lookup"):
            return _answers(answer, body["pieces"])

    async def recorded(
        self, home: str, body: dict[str, Any]
    ) -> tuple[dict[int, bytes | None], set[int]]:
        """The sha256 `home` records for each piece `body` asks about (None: none yet), and
        of the pieces `body` says its holder holds, those `home` recorded it for (none from a
        home that takes no such word)."""
        answer = await self._ask_home("POST", home, "/v1/recorded", body)
        if answer is None:
            raise PeerError(f"{home} has no directory")
        with _reading(home, "record"):
            pieces = _item(answer, "pieces")
            recorded = {
                i: _sha256(_item(pieces, str(i), "pieces"), f"pieces.{i}") for i in body["pieces"]
            }
            held = answer.get("held", [])  # (a JSON object: _item read its pieces)
            if not isinstance(held, list) or not all(type(i) is int for i in held):
                raise _Unusable("held is not a list of piece indices")
            return recorded, set(held)

    async def release(self, home: str, body: dict[str, Any]) -> None:
        await self._ask_home("POST", home, "/v1/release", body)

    async def announce(self, home: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._ask_home("POST", home, "/v1/announce", body)  # type: ignore[no-any-return]

    async def complete(self, peer: str, body: dict[str, Any]) -> tuple[str, str | None]:
        answer = await self._json("POST", peer, "/v1/complete", body)
        if answer is None:
            raise PeerError(f"{peer} cannot complete blobs")
        with _reading(peer, "completion"):
            return _completion(answer)

    async def completion(self, peer: str, digest_hex: str) -> tuple[str, str | None]:
        answer = await self._json("GET", peer, f"/v1/complete/sha256:{digest_hex}")
        if answer is None:
            raise PeerError(f"{peer} cannot complete blobs")
        with _reading(peer, "completion"):
            return _completion(answer)

    async def report(self, home: str, body: dict[str, Any]) -> None:
        await self._ask_home("POST", home, "/v1/report", body)

    async def piece(
        self,
        peer: str,
        digest_hex: str,
        origin: str,
        index: int,
        length: int,
        *,
        sending: asyncio.Event | None = None,
        arrived: Callable[[bytes], None] | None = None,
        tree: bool = False,
    ) -> bytes:
        """The whole piece from `peer` (exactly `length` bytes), or PeerError: one it holds,
        or one it is receiving from `origin` (directly or through peers) right now, as the
        bytes arrive there. `sending` is set once the peer has agreed to send it; `arrived`
        is told each part as it comes in. A peer that trickles (see
        _MIN_BYTES_PER_READ_TIMEOUT) is given up like one that stalls. `tree`: `peer` is
        this agent's parent in the piece's stripe tree, asked before it may have begun to
        read the blob (it waits a moment for the piece: see PeerServer._piece)."""
        assert self._session is not None
        url = f"{self._scheme}://{peer}/v1/pieces/sha256:{digest_hex}/{index}"
        params = {"origin": origin, **({"tree": "1"} if tree else {})}
        try:
            async with self._session.get(url, params=params) as response:
                self.unreachable.discard(peer)
                if response.status == 429:
                    raise PeerError(f"{peer} is busy", busy=True)
                if response.status != 200:
                    raise PeerError(f"{peer} answered {response.status} for piece {index}")
                if sending is not None:
                    sending.set()
                parts = []
                received = 0
                pace = PaceWatch(self._read_timeout, _MIN_BYTES_PER_READ_TIMEOUT)
                async for part in response.content.iter_any():
                    received += len(part)
                    if received > length:
                        raise PeerError(f"{peer} sent more than piece {index}'s {length} bytes")
                    parts.append(part)
                    if arrived is not None:
                        arrived(part)
                    pace.arrived(len(part))
                data = b"".join(parts)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, aiohttp.ClientConnectionError | TimeoutError):
                self.unreachable.add(peer)
            raise PeerError(f"{peer}: {exc or type(exc).__name__}") from exc
        if len(data) != length:
            raise PeerError(f"{peer} sent {len(data)} bytes of piece {index}, not {length}")
        return data


class _Unusable(ValueError):
    """A part of a peer's answer that is not what the protocol says (named in the message)."""


@contextlib.contextmanager
def _reading(peer: str, kind: str) -> Iterator[None]:
    """Reading `peer`'s answer of `kind`: an unusable part is a MalformedAnswer."""
    try:
        yield
    except _Unusable as exc:
        raise MalformedAnswer(peer, kind, str(exc)) from None


def _item(value: object, name: str, within: str = "") -> object:
    """Field `name` of the JSON object `value` (the one at `within`, empty for the answer)."""
    if not isinstance(value, dict):
        raise _Unusable(f"{within or 'the answer'} is not a JSON object")
    if name not in value:
        raise _Unusable(f"{within}.{name} is missing" if within else f"{name} is missing")
    return value[name]


def _size(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BLOB_BYTES:
        raise _Unusable(f"{where} is not a number of bytes")
    return value


def _text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise _Unusable(f"{where} is not a string")
    return value


def _optional_text(value: object, where: str) -> str | None:
    return None if value is None else _text(value, where)


def _sha256(value: object, where: str) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str) or _SHA256_HEX.fullmatch(value) is None:
        raise _Unusable(f"{where} is not a sha256 (64 lower-case hex digits)")
    return bytes.fromhex(value)


def _answers(answer: object, indices: list[int]) -> dict[int, Answer]:
    """A home's lookup answer for every piece of `indices` (see PeerServer._lookup)."""
    pieces = _item(answer, "pieces")
    answers = {}
    for index in indices:
        where = f"pieces.{index}"
        entry = _item(pieces, str(index), "pieces")
        holders = _item(entry, "holders", where)
        if not isinstance(holders, list) or not all(isinstance(h, str) for h in holders):
            raise _Unusable(f"{where}.holders is not a list of peers")
        fetch = _item(entry, "fetch", where)
        if not isinstance(fetch, bool):
            raise _Unusable(f"{where}.fetch is not true or false")
        # (a home of an earlier version never says "wait")
        wait = entry.get("wait", False) if isinstance(entry, dict) else False
        if not isinstance(wait, bool):
            raise _Unusable(f"{where}.wait is not true or false")
        answers[index] = Answer(
            _sha256(_item(entry, "sha256", where), f"{where}.sha256"),
            tuple(holders),
            fetch,
            _optional_text(_item(entry, "fetching", where), f"{where}.fetching"),
            wait=wait,
        )
    return answers


def _completion(answer: object) -> tuple[str, str | None]:
    """(state, error) of a blob a peer completes (see Completions)."""
    return _text(_item(answer, "state"), "state"), _optional_text(_item(answer, "error"), "error")


async def _read_at_most(content: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body; ValueError once it passes `limit` bytes."""
    body = bytearray()
    while chunk := await content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise ValueError(f"an answer of over {limit} bytes")
    return bytes(body)
