"""Peer servers standing in for swarm members that only ever send pieces: to see what an agent
does with what its parents in a blob's stripe trees send it (honest bytes, late ones, lies)."""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from tests.support.ports import free_ports


class FakeParents:
    """One server on several loopback ports. A piece request (`GET /v1/pieces/...`) gets piece
    `index` of `data` after `delay` seconds (`delays[index]` for that piece), or
    `lies[index]` instead; anything else a 404 (a home that does not answer). Each request is
    recorded as (port, index, tree flag). Set `data` (and the rest) once the ports are known:
    members are ranked by their addresses."""

    def __init__(self, piece_size: int) -> None:
        self._piece_size = piece_size
        self.data = b""
        self.delay = 0.0
        self.delays: dict[int, float] = {}
        self.lies: dict[int, bytes] = {}
        self.requests: list[tuple[int, int, bool]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self, count: int) -> list[str]:
        """Listen on `count` free ports; their addresses, as members name them."""
        self._thread.start()
        ports = free_ports(count)
        asyncio.run_coroutine_threadsafe(self._serve(ports), self._loop).result(10)
        return [f"127.0.0.1:{port}" for port in ports]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    async def _serve(self, ports: list[int]) -> None:
        app = web.Application()
        app.router.add_get("/v1/pieces/{digest}/{index}", self._piece)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        for port in ports:
            await web.TCPSite(self._runner, "127.0.0.1", port).start()

    async def _piece(self, request: web.Request) -> web.Response:
        index = int(request.match_info["index"])
        port = request.transport.get_extra_info("sockname")[1] if request.transport else 0
        self.requests.append((port, index, request.query.get("tree") == "1"))
        await asyncio.sleep(self.delays.get(index, self.delay))
        start = index * self._piece_size
        body = self.lies.get(index, self.data[start : start + self._piece_size])
        return web.Response(body=body, content_type="application/octet-stream")
