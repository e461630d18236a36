"""Sending stored bytes to a client without copying whole pieces through Python.

On the default asyncio loop this is the kernel's sendfile. Where the loop (uvloop) or the
transport (TLS) cannot do that, bounded `pread`s in a worker thread feed the response.
"""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from dfagent.engine.fetcher import FileSegment

__all__ = ["send_segment"]

_CHUNK = 512 * 1024


async def send_segment(
    request: web.BaseRequest, response: web.StreamResponse, segment: FileSegment
) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    if transport.get_extra_info("sslcontext") is None:  # TLS needs the bytes in user space
        try:
            sent = await loop.sendfile(
                transport, segment.blob.file, segment.offset, segment.count, fallback=False
            )
        except (NotImplementedError, asyncio.SendfileNotAvailableError):
            pass  # uvloop: no sendfile; read below
        except RuntimeError as exc:  # the transport is closing: the client went away
            raise ConnectionResetError(str(exc)) from exc
        else:
            if sent != segment.count:
                raise OSError(f"stored blob {segment.blob.digest} is shorter than recorded")
            return
    fd = segment.blob.file.fileno()
    position, end = segment.offset, segment.offset + segment.count
    while position < end:
        data = await asyncio.to_thread(os.pread, fd, min(_CHUNK, end - position), position)
        if not data:
            raise OSError(f"stored blob {segment.blob.digest} is shorter than recorded")
        await response.write(data)
        position += len(data)
