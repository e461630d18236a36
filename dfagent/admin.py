"""Health (`/healthy`, `/readyz`), Prometheus (`/metrics`) and the operator API (`/api/...`,
on the health listener).

`/healthy` answers at once (nydusd's `ping_url`). `/readyz` checks the index, the data
directory and the proxy listener together within a second and lists every failure.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from dfagent.configtypes import ListenAddress
from dfagent.metrics import Metrics
from dfagent.serving import bind, drain

__all__ = ["AdminServer", "ReadinessCheck"]

log = logging.getLogger(__name__)

# Raises with a reason when not ready; may return a note (ready, but worth knowing).
ReadinessCheck = Callable[[], Awaitable[str | None]]
_READY_TIMEOUT = 1.0

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class AdminServer:
    """Serves health and metrics paths; one listener when both share an address."""

    def __init__(
        self,
        health: ListenAddress,
        metrics_listen: ListenAddress,
        metrics: Metrics,
        checks: dict[str, ReadinessCheck],
        api: Handler | None = None,
    ) -> None:
        self._api = api
        self._health = health
        self._metrics_listen = metrics_listen
        self._metrics = metrics
        self._checks = checks
        self._servers: list[asyncio.Server] = []
        self._http: list[web.Server] = []
        self.ready = False

    async def start(self) -> None:
        health_routes: dict[str, Handler] = {"/healthy": self._healthy, "/readyz": self._readyz}
        metric_routes: dict[str, Handler] = {"/metrics": self._metrics_page}
        if self._health == self._metrics_listen and self._health.port != 0:
            await self._serve("health", self._health, health_routes | metric_routes)
        else:
            await self._serve("health", self._health, health_routes)
            await self._serve("metrics", self._metrics_listen, metric_routes)

    @property
    def ports(self) -> list[int]:
        return [int(s.sockets[0].getsockname()[1]) for s in self._servers]

    async def _serve(self, name: str, address: ListenAddress, routes: dict[str, Handler]) -> None:
        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            if self._api is not None and name == "health" and request.path.startswith("/api/"):
                return await self._api(request)
            handler = routes.get(request.path)
            if handler is None or request.method not in ("GET", "HEAD"):
                return web.Response(status=404, text="not found\n")
            return await handler(request)

        http = web.Server(dispatch, access_log=None)
        self._http.append(http)
        self._servers.append(await bind(name, address, http))

    async def stop(self) -> None:
        # a listener that failed to bind left its web.Server without connections behind it
        servers = zip(self._servers, self._http, strict=False)
        await asyncio.gather(*(drain(server, http, 1.0) for server, http in servers))

    async def _healthy(self, _: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.BaseRequest) -> web.StreamResponse:
        failures = [] if self.ready else ["agent: starting or stopping"]
        names = list(self._checks)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._checks[n](), _READY_TIMEOUT) for n in names),
            return_exceptions=True,
        )
        notes = []
        for name, result in zip(names, results, strict=True):
            if isinstance(result, BaseException):
                failures.append(f"{name}: {result or type(result).__name__}")
            elif result:
                notes.append(f"{name}: {result}")
        if failures:
            return web.Response(status=503, text="\n".join(failures + notes) + "\n")
        return web.Response(text="\n".join(["ready", *notes]) + "\n")

    async def _metrics_page(self, _: web.BaseRequest) -> web.StreamResponse:
        body = generate_latest(self._metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
