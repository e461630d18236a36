"""Everything that is not a cached blob read goes upstream unchanged, streaming both ways."""

from __future__ import annotations

import logging

import aiohttp
from aiohttp import web

from dfagent.errors import OriginError
from dfagent.origin.client import OriginClient
from dfagent.proxy.headers import end_to_end
from dfagent.proxy.routing import Route

__all__ = ["pass_through"]

log = logging.getLogger(__name__)

_NO_BODY_STATUSES = frozenset({204, 304})


async def pass_through(
    request: web.BaseRequest, route: Route, origin: OriginClient, *, drop: tuple[str, ...] = ()
) -> web.StreamResponse:
    """`drop`: request headers (lower case) not to pass on."""
    headers = end_to_end(request.headers, drop=("host", *drop))
    body = request.content.iter_any() if request.body_exists else None
    async with origin.forward(request.method, route.upstream, headers, body) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(end_to_end(upstream.headers, drop=("content-length",)))
        if upstream.status not in _NO_BODY_STATUSES and upstream.content_length is not None:
            response.content_length = upstream.content_length
        await response.prepare(request)
        if request.method == "HEAD" or upstream.status in _NO_BODY_STATUSES:
            return response
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError, OriginError) as exc:
            log.warning("upstream body broke off; cutting the response", extra={"error": str(exc)})
            if request.transport is not None:
                request.transport.close()
    return response
