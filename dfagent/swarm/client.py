"""Talking to other agents: directory lookups and announcements at a blob's home, piece
downloads from holders. Only the cluster token goes to peers, never a client's credentials."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp

from dfagent.errors import DfagentError

__all__ = ["PeerClient", "PeerError"]

_PATIENT = aiohttp.ClientTimeout(total=None, sock_connect=2, sock_read=5)


class PeerError(DfagentError):
    """A peer could not be reached, refused, or answered something unusable."""

    def __init__(self, message: str, *, busy: bool = False, unreachable: bool = False) -> None:
        super().__init__(message)
        self.busy = busy
        self.unreachable = unreachable  # no answer at all (refused, timed out, reset)


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
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._session: aiohttp.ClientSession | None = None
        self.unreachable: set[str] = set()  # peers whose last contact failed

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
                return await r.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            gone = isinstance(exc, aiohttp.ClientConnectionError | TimeoutError)
            if gone:
                self.unreachable.add(peer)
            raise PeerError(f"{peer}: {exc or type(exc).__name__}", unreachable=gone) from exc

    async def describe(self, home: str, digest_hex: str, origin: str) -> dict[str, int] | None:
        """What `home` knows of a blob as `origin` gave it."""
        path = f"/v1/blobs/sha256:{digest_hex}?{urlencode({'origin': origin})}"
        return await self._json("GET", home, path)  # type: ignore[no-any-return]

    async def progress(self, peer: str, digest_hex: str, index: int) -> int:
        """How many bytes of piece `index` of a blob have reached `peer` so far (of the whole
        blob, from an agent that counts only those). Patient: it waits longer than the
        fail-fast connect timeout, since a busy peer on a loaded host may take a while to
        answer, and only a peer that truly does not answer counts as dead."""
        path = f"/v1/progress/sha256:{digest_hex}?piece={index}"
        answer = await self._json("GET", peer, path, limits=_PATIENT)
        if answer is None:
            raise PeerError(f"{peer} cannot tell its progress")
        return int(answer.get("piece", answer["arrived"]))

    async def lookup(self, home: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._json("POST", home, "/v1/lookup", body)
        if answer is None:
            raise PeerError(f"{home} has no directory")
        return answer  # type: ignore[no-any-return]

    async def recorded(self, home: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._json("POST", home, "/v1/recorded", body)
        if answer is None:
            raise PeerError(f"{home} has no directory")
        return answer  # type: ignore[no-any-return]

    async def release(self, home: str, body: dict[str, Any]) -> None:
        await self._json("POST", home, "/v1/release", body)

    async def announce(self, home: str, body: dict[str, Any]) -> dict[str, Any]:
        return await self._json("POST", home, "/v1/announce", body)  # type: ignore[no-any-return]

    async def complete(self, peer: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await self._json("POST", peer, "/v1/complete", body)
        if answer is None:
            raise PeerError(f"{peer} cannot complete blobs")
        return answer  # type: ignore[no-any-return]

    async def completion(self, peer: str, digest_hex: str) -> dict[str, Any]:
        answer = await self._json("GET", peer, f"/v1/complete/sha256:{digest_hex}")
        if answer is None:
            raise PeerError(f"{peer} cannot complete blobs")
        return answer  # type: ignore[no-any-return]

    async def report(self, home: str, body: dict[str, Any]) -> None:
        await self._json("POST", home, "/v1/report", body)

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
    ) -> bytes:
        """The whole piece from `peer` (exactly `length` bytes), or PeerError: one it holds,
        or one it is receiving from `origin` (directly or through peers) right now, as the
        bytes arrive there. `sending` is set once the peer has agreed to send it; `arrived`
        is told each part as it comes in."""
        assert self._session is not None
        url = f"{self._scheme}://{peer}/v1/pieces/sha256:{digest_hex}/{index}"
        try:
            async with self._session.get(url, params={"origin": origin}) as response:
                self.unreachable.discard(peer)
                if response.status == 429:
                    raise PeerError(f"{peer} is busy", busy=True)
                if response.status != 200:
                    raise PeerError(f"{peer} answered {response.status} for piece {index}")
                if sending is not None:
                    sending.set()
                parts = []
                received = 0
                async for part in response.content.iter_any():
                    received += len(part)
                    if received > length:
                        raise PeerError(f"{peer} sent more than piece {index}'s {length} bytes")
                    parts.append(part)
                    if arrived is not None:
                        arrived(part)
                data = b"".join(parts)
        except (aiohttp.ClientError, TimeoutError) as exc:
            if isinstance(exc, aiohttp.ClientConnectionError | TimeoutError):
                self.unreachable.add(peer)
            raise PeerError(f"{peer}: {exc or type(exc).__name__}") from exc
        if len(data) != length:
            raise PeerError(f"{peer} sent {len(data)} bytes of piece {index}, not {length}")
        return data
