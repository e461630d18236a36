"""Blob GET/HEAD: answer from the engine with exact status, headers and byte counts.

Headers go out only once the first bytes are in hand, so an origin error still becomes a
proper status. After that, a failure cuts the connection: never a short body that looks whole.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

from aiohttp import web

from dfagent.core.digest import Digest
from dfagent.core.ranges import (
    MalformedRange,
    RangeRequest,
    UnsatisfiableRange,
    if_range_holds,
    names_bytes,
    parse_range_header,
)
from dfagent.engine.fetcher import Engine, FileSegment
from dfagent.engine.prefetch import Prefetcher
from dfagent.errors import BadRequest, DfagentError, RangeNotSatisfiable
from dfagent.origin.client import BlobSource
from dfagent.proxy.headers import DOWNLOAD_FINISHED, PREFETCH, TASK_ID
from dfagent.proxy.routing import Route
from dfagent.proxy.stall import cut_when_stalled
from dfagent.sendfile import send_segment
from dfagent.storage.store import StoredBlob

__all__ = ["range_headers_judged_here", "serve_blob"]

log = logging.getLogger(__name__)


async def serve_blob(
    request: web.BaseRequest,
    route: Route,
    engine: Engine,
    *,
    prefetcher: Prefetcher,
    prefetch: bool,
    stall_limit: float,
) -> web.StreamResponse:
    """`stall_limit`: seconds a client may take no byte of the body before it is cut off."""
    assert route.digest is not None
    wanted = _wanted_range(request, _etag(route.digest))
    source = BlobSource(route.upstream, route.digest, request.headers.get("Authorization"))
    # A blob seen for the first time learns its size from the GET of the first byte wanted
    # (none for HEAD or a suffix range: those ask the origin with a HEAD).
    wanted_first = 0 if wanted is None else wanted.first
    first_byte = None if request.method == "HEAD" else wanted_first
    blob = await engine.blob(source, first_byte)
    with blob.pinned():  # from lookup to the last byte sent: eviction waits
        return await _answer(
            request,
            blob,
            source,
            wanted,
            engine=engine,
            prefetcher=prefetcher,
            prefetch=prefetch,
            stall_limit=stall_limit,
        )


async def _answer(
    request: web.BaseRequest,
    blob: StoredBlob,
    source: BlobSource,
    wanted: RangeRequest | None,
    *,
    engine: Engine,
    prefetcher: Prefetcher,
    prefetch: bool,
    stall_limit: float,
) -> web.StreamResponse:
    digest = blob.digest
    headers = _blob_headers(digest)
    if blob.verified:  # every byte comes from this node's checked copy
        headers[DOWNLOAD_FINISHED] = "true"
    if request.method == "HEAD":
        response = web.StreamResponse(status=200, headers=headers)
        response.content_length = blob.size
        return response
    if wanted is None:
        status, first, last = 200, 0, blob.size - 1
    else:
        try:
            byte_range = wanted.resolve(blob.size)
        except UnsatisfiableRange:
            raise RangeNotSatisfiable(blob.size) from None
        status, first, last = 206, byte_range.first, byte_range.last
        headers["Content-Range"] = byte_range.content_range()
        if prefetch or request.headers.get(PREFETCH, "").lower() == "true":
            prefetcher.start(blob, source)

    response = web.StreamResponse(status=status, headers=headers)
    response.content_length = last - first + 1
    if last < first:  # an empty blob, asked for whole
        await response.prepare(request)
        return response
    async with aclosing(engine.segments(blob, source, first, last)) as segments:
        part = await anext(segments)  # errors before this line still get a status
        await response.prepare(request)
        try:
            with cut_when_stalled(request.transport, stall_limit):
                await _send(request, response, part, segments)
        except (DfagentError, OSError) as exc:
            log.warning(
                "blob response cut after headers",
                extra={"digest": str(digest), "error": str(exc) or type(exc).__name__},
            )
            if request.transport is not None:
                request.transport.close()
    return response


async def _send(
    request: web.BaseRequest,
    response: web.StreamResponse,
    part: FileSegment | memoryview,
    rest: AsyncIterator[FileSegment | memoryview],
) -> None:
    while True:
        if isinstance(part, FileSegment):
            await send_segment(request, response, part)
        else:
            await response.write(part)
        following = await anext(rest, None)
        if following is None:
            return
        part = following


def _wanted_range(request: web.BaseRequest, etag: str) -> RangeRequest | None:
    """The byte range a request asks for; None for the whole blob. Only a GET has a range
    (RFC 9110 §14.2), and only in bytes; If-Range naming anything but this blob voids it.
    A malformed byte range is a BadRequest."""
    value = request.headers.get("Range")
    if_range = request.headers.getall("If-Range", [])
    if (
        request.method != "GET"
        or value is None
        or not names_bytes(value)
        or len(if_range) > 1  # a single-value field: several name nothing for certain
        or not if_range_holds(if_range[0] if if_range else None, etag)
    ):
        return None
    try:
        return parse_range_header(value)
    except MalformedRange as exc:
        raise BadRequest(str(exc)) from None


def range_headers_judged_here(request: web.BaseRequest, digest: Digest) -> tuple[str, ...]:
    """The request headers a blob read passed straight to the registry goes without, so that it
    is answered as a cached read would be: If-Range, judged here against the blob's own tag
    (a registry's tag may differ), and Range when this agent ignores it (see _wanted_range)."""
    if _wanted_range(request, _etag(digest)) is None:
        return ("range", "if-range")
    return ("if-range",)


def _etag(digest: Digest) -> str:
    return f'"{digest}"'


def _blob_headers(digest: Digest) -> dict[str, str]:
    return {
        "Content-Type": "application/octet-stream",
        "Docker-Content-Digest": str(digest),
        "Etag": _etag(digest),
        "Accept-Ranges": "bytes",
        TASK_ID: digest.hex,
    }
