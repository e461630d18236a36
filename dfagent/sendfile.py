"""Sending stored bytes to a client without copying whole pieces through Python.

On the default asyncio loop this is the kernel's sendfile. A large segment is sent from a
small pool of sender threads: the kernel's copy then runs beside the event loop (on another
core) instead of inside it, so one big response does not hold up every other client. The
threads only ever copy what the socket takes at once; waiting for a slow client to make room
happens on the loop, so a stalled client never holds a thread. Where the loop (uvloop) or the
transport (TLS) cannot do sendfile, bounded `pread`s in a worker thread feed the response.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from dfagent.engine.fetcher import FileSegment

__all__ = ["send_segment"]

_CHUNK = 512 * 1024
# Segments at least this large go to the sender threads; below it the hand-off costs more
# than the copy it moves off the loop.
_THREADED_BYTES = 512 * 1024
_SENDERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="dfagent-sendfile")


class _Sends:
    under_way = 0  # on this process's event loop


_SENDS = _Sends()


async def send_segment(
    request: web.BaseRequest, response: web.StreamResponse, segment: FileSegment
) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    loop = asyncio.get_running_loop()
    if transport.get_extra_info("sslcontext") is None:  # TLS needs the bytes in user space
        # Alone, a send is quickest on the loop itself; beside others, in a sender thread.
        threaded = (
            segment.count >= _THREADED_BYTES
            and _SENDS.under_way > 0
            and _threadable(loop, transport)
        )
        _SENDS.under_way += 1
        try:
            if threaded:
                await _send_threaded(loop, transport, segment)
                return
            sent = await loop.sendfile(
                transport, segment.blob.file, segment.offset, segment.count, fallback=False
            )
        except (NotImplementedError, asyncio.SendfileNotAvailableError):
            pass  # uvloop: no sendfile; read below
        except RuntimeError as exc:  # the transport is closing: the client went away
            raise ConnectionResetError(str(exc)) from exc
        else:
            if sent != segment.count:
                raise _short(segment)
            return
        finally:
            _SENDS.under_way -= 1
    fd = segment.blob.file.fileno()
    position, end = segment.offset, segment.offset + segment.count
    while position < end:
        data = await asyncio.to_thread(os.pread, fd, min(_CHUNK, end - position), position)
        if not data:
            raise _short(segment)
        await response.write(data)
        position += len(data)


def _threadable(loop: asyncio.AbstractEventLoop, transport: asyncio.BaseTransport) -> bool:
    """Whether the socket is free for a sender thread: a plain socket of the default loop
    whose transport has nothing of its own left to send (the headers went out)."""
    return (
        isinstance(loop, asyncio.SelectorEventLoop)
        and isinstance(transport, asyncio.WriteTransport)
        and not transport.is_closing()
        and transport.get_write_buffer_size() == 0
        and transport.get_extra_info("socket") is not None
    )


async def _send_threaded(
    loop: asyncio.AbstractEventLoop, transport: asyncio.WriteTransport, segment: FileSegment
) -> None:
    # Duplicate descriptors, closed only once no thread uses them: if the transport or the
    # blob's file closes meanwhile (the client went away, the blob was evicted), their numbers
    # cannot be reused for another connection or file under the thread.
    file = os.dup(segment.blob.file.fileno())  # raises BlobRemoved for a purged blob
    try:
        sock = os.dup(transport.get_extra_info("socket").fileno())
    except BaseException:
        os.close(file)
        raise
    job: asyncio.Future[int] | None = None
    try:
        position, end = segment.offset, segment.offset + segment.count
        while position < end:
            job = loop.run_in_executor(_SENDERS, _send_some, sock, file, position, end)
            sent = await asyncio.shield(job)
            if sent < 0:
                raise _short(segment)
            position += sent
            if position < end:
                await _writable(loop, sock)
    finally:
        if job is None or job.done():
            _close(sock, file)
        else:  # cancelled while a thread copies: it stops once the socket is full
            job.add_done_callback(lambda _: _close(sock, file))


def _send_some(sock: int, file: int, position: int, end: int) -> int:
    """sendfile until the socket is full or `end` is reached: the bytes sent, or -1 when the
    file ends before `end`. (Runs in a sender thread: the GIL is free while the kernel copies.)"""
    sent = 0
    while position + sent < end:
        try:
            count = os.sendfile(sock, file, position + sent, end - position - sent)
        except BlockingIOError:
            return sent
        if count == 0:
            return -1
        sent += count
    return sent


async def _writable(loop: asyncio.AbstractEventLoop, sock: int) -> None:
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_writer(sock, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_writer(sock)


def _close(*descriptors: int) -> None:
    for descriptor in descriptors:
        os.close(descriptor)


def _short(segment: FileSegment) -> OSError:
    return OSError(f"stored blob {segment.blob.digest} is shorter than recorded")
