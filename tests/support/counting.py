"""A request-counting, fault-injecting reverse proxy put in front of the real registry.

It records every request that reaches the origin, so tests can prove what the agent did
*not* fetch; `faults` lets a test make the origin misbehave in ways the real registry never
would (ignore Range, break off mid-body, fail with 500, redirect).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from tests.support.ports import free_port

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    authorization: str | None
    user_agent: str | None = None


# A fault looks at a request and returns a response to send instead, or None to pass it on.
Fault = Callable[[web.BaseRequest], Awaitable[web.StreamResponse | None]]


@dataclass
class CountingOrigin:
    upstream: str
    requests: list[Seen] = field(default_factory=list)
    received_headers: list[dict[str, str]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    _runner: web.BaseRunner | None = None
    _session: aiohttp.ClientSession | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def blob_gets(self, digest: str) -> list[Seen]:
        return [
            r for r in self.requests if r.method == "GET" and r.path.endswith(f"/blobs/{digest}")
        ]

    def blob_bytes(self, digest: str, size: int) -> int:
        """Bytes of the blob that GETs asked the origin for (ranged or whole)."""
        total = 0
        for seen in self.blob_gets(digest):
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", seen.range or "")
            if match is None:
                total += size
                continue
            last = int(match.group(2)) if match.group(2) else size - 1
            total += min(last, size - 1) - int(match.group(1)) + 1
        return total

    def start(self) -> CountingOrigin:
        """Serve from a thread of its own, so that blocking test code cannot stall it."""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        self._runner = web.ServerRunner(web.Server(self._handle))
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        assert self._loop is not None and self._thread is not None
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        self.requests.append(
            Seen(
                request.method,
                request.path,
                request.headers.get("Range"),
                request.headers.get("Authorization"),
                request.headers.get("User-Agent"),
            )
        )
        self.received_headers.append(dict(request.headers))
        for fault in self.faults:
            response = await fault(request)
            if response is not None:
                return response
        return await self.forward(request)

    async def forward_pausing(
        self,
        request: web.BaseRequest,
        head: Callable[[int], int],
        pause: Callable[[], Awaitable[None]],
    ) -> web.StreamResponse:
        """Forward `request`, but send the first `head(body length)` bytes of the body, then
        await `pause()` before the rest (a registry that stalls mid-body)."""
        response, body = await self.forward_headers(request)
        first = head(len(body))
        await response.write(body[:first])
        await pause()
        await response.write(body[first:])
        return response

    async def forward_headers(self, request: web.BaseRequest) -> tuple[web.StreamResponse, bytes]:
        """Forward `request` and send the registry's headers back: the response, whose body
        is the caller's to write (as it pleases: in parts, slowly, or not all), and that body."""
        upstream = await self.forward(request)
        assert isinstance(upstream, web.Response) and upstream.body is not None
        body = bytes(upstream.body)
        response = web.StreamResponse(status=upstream.status, headers=upstream.headers)
        response.content_length = len(body)
        await response.prepare(request)
        return response, body

    async def forward(
        self, request: web.BaseRequest, *, drop_range: bool = False
    ) -> web.StreamResponse:
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP | {"host"}}
        if drop_range:
            headers.pop("Range", None)
        body = await request.read() if request.body_exists else None
        async with self._session.request(
            request.method,
            self.upstream + request.raw_path,
            headers=headers,
            data=body,
            allow_redirects=False,
        ) as upstream:
            # The registry's 416 declares the blob's length but sends a short error body.
            payload = b"" if upstream.status == 416 else await upstream.read()
            response = web.Response(
                status=upstream.status, body=payload if request.method != "HEAD" else None
            )
            for key, value in upstream.headers.items():
                if key.lower() not in _HOP:
                    response.headers.add(key, value)
            if request.method == "HEAD" and "Content-Length" in upstream.headers:
                response.headers["Content-Length"] = upstream.headers["Content-Length"]
            return response
