"""The proxy nydusd and containerd talk to: routes each request to the blob path, the
pass-through path or (first request on a connection) a CONNECT tunnel; turns errors into
statuses through one table; logs one line per request."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time

from aiohttp import web

from dfagent.engine.fetcher import Engine, NotShareable
from dfagent.engine.prefetch import Prefetcher
from dfagent.errors import (
    DfagentError,
    OriginHTTPError,
    RangeNotSatisfiable,
    Throttled,
    http_status,
)
from dfagent.logs import REQUEST_ID
from dfagent.metrics import Metrics
from dfagent.origin.client import OriginClient
from dfagent.proxy.blobs import range_headers_judged_here, serve_blob
from dfagent.proxy.certs import LeafCertificates
from dfagent.proxy.config import ProxyConfig
from dfagent.proxy.headers import ERROR_TYPE
from dfagent.proxy.passthrough import pass_through
from dfagent.proxy.routing import route
from dfagent.proxy.tunnel import FrontProtocol, Interceptor, TunnelRegistry
from dfagent.serving import bind, drain

__all__ = ["ProxyServer"]

log = logging.getLogger(__name__)


class ProxyServer:
    def __init__(
        self,
        config: ProxyConfig,
        engine: Engine,
        prefetcher: Prefetcher,
        origin: OriginClient,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._engine = engine
        self._prefetcher = prefetcher
        self._origin = origin
        self._metrics = metrics
        self._http: web.Server | None = None
        self._server: asyncio.Server | None = None
        self._throttle = _Throttle(config.rate_limit) if config.rate_limit else None
        self._intercept: Interceptor | None = None
        if config.intercept:
            assert config.ca_cert is not None and config.ca_key is not None
            certificates = LeafCertificates(config.ca_cert, config.ca_key)
            self._intercept = Interceptor(config.intercept, certificates)
        self._tunnels = TunnelRegistry(
            origin.connect_timeout,
            float(config.tunnel_idle_timeout),
            lambda status: self._count("connect", status),
            self._intercept,
        )

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._http = web.Server(
            self._handle,
            access_log=None,
            auto_decompress=False,  # request bodies go upstream byte for byte
            handler_cancellation=True,
            keepalive_timeout=self._config.idle_timeout,
        )
        http = self._http
        self._server = await bind(
            "proxy",
            self._config.listen,
            lambda: FrontProtocol(http, self._tunnels, self._config.head_timeout),
        )

    async def stop(self) -> None:
        """Stop accepting, close idle connections, let in-flight responses finish within the
        grace period, cut the rest."""
        await drain(self._server, self._http, self._config.shutdown_grace)
        await self._tunnels.aclose()

    def _target(self, request: web.BaseRequest) -> str:
        """The request-target; inside an intercepted tunnel, as the absolute https URL."""
        if self._intercept is not None and request.transport is not None:
            authority = self._intercept.authority.get(request.transport)
            if authority is not None and request.raw_path.startswith("/"):
                return f"https://{authority}{request.raw_path}"
        return request.raw_path

    def _count(self, kind: str, status: int) -> None:
        self._metrics.requests.labels(kind, f"{status // 100}xx").inc()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        REQUEST_ID.set(f"{random.getrandbits(48):012x}")  # names log lines, proves nothing
        started = time.perf_counter()
        kind = "invalid"
        self._metrics.requests_in_flight.inc()
        response: web.StreamResponse | None = None
        try:
            target = route(self._config, request.method, self._target(request), request.headers)
            kind = "blob" if target.digest is not None else "passthrough"
            drop: tuple[str, ...] = ()
            if target.digest is not None:
                if self._throttle is not None and not self._throttle.allow():
                    raise Throttled(f"over proxy.rate_limit ({self._config.rate_limit}/s)")
                try:
                    response = await serve_blob(
                        request,
                        target,
                        self._engine,
                        prefetcher=self._prefetcher,
                        prefetch=self._config.prefetch,
                        stall_limit=float(self._config.idle_timeout),
                    )
                    return response
                except NotShareable:
                    kind = "uncached"
                    drop = range_headers_judged_here(request, target.digest)
            response = await pass_through(request, target, self._origin, drop=drop)
            return response
        except DfagentError as exc:
            response = _error_response(exc)
            _log_error(request, exc, response.status)
            return response
        finally:
            self._metrics.requests_in_flight.dec()
            status = response.status if response is not None else 499
            self._count(kind, status)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "request",
                    extra={
                        "method": request.method,
                        "target": _loggable(request.raw_path),
                        "kind": kind,
                        "status": status,
                        "ms": round((time.perf_counter() - started) * 1000, 2),
                    },
                )


class _Throttle:
    """A token bucket: `rate` requests per second, bursts of up to one second's worth. The
    bucket holds at least the one token a request takes, so a rate under 1 admits a request
    every 1/rate seconds."""

    def __init__(self, rate: float) -> None:
        self._rate = rate
        self._capacity = max(rate, 1.0)
        self._tokens = self._capacity
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._capacity, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


def _error_response(exc: DfagentError) -> web.Response:
    status = http_status(exc)
    if isinstance(exc, OriginHTTPError):
        response = web.Response(status=status, body=exc.body, headers=exc.headers)
        response.headers[ERROR_TYPE] = "backend"
        return response
    response = web.Response(status=status, text=f"{exc}\n", headers={ERROR_TYPE: "proxy"})
    if isinstance(exc, RangeNotSatisfiable):
        response.headers["Content-Range"] = f"bytes */{exc.size}"
    return response


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def _loggable(target: str) -> str:
    """A request-target fit for the log: no query string, no credentials in the URL (they are
    refused, but the refusal is logged)."""
    return _USERINFO.sub(r"\1", target.split("?", 1)[0])


def _log_error(request: web.BaseRequest, exc: DfagentError, status: int) -> None:
    # An origin's 401 is the start of the client's own token dance, not a fault.
    level = logging.DEBUG if isinstance(exc, OriginHTTPError) else logging.WARNING
    log.log(
        level,
        str(exc),
        extra={
            "method": request.method,
            "target": _loggable(request.raw_path)[:200],
            "status": status,
            "source": exc.source,
        },
    )
