"""A client that takes no byte of a response for a while is cut off: a reader that stopped
reading must not hold its connection, nor the blob it pins against eviction, for good.

Progress is what the client acknowledges (Linux's `tcpi_bytes_acked`), whichever way the bytes
go out (`sendfile` on the loop, in a sender thread, or written from memory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterator

__all__ = ["cut_when_stalled"]

log = logging.getLogger(__name__)

_TCP_INFO_BYTES = 128
_BYTES_ACKED = struct.Struct("=Q")  # struct tcp_info's tcpi_bytes_acked
_BYTES_ACKED_AT = 120


@contextlib.contextmanager
def cut_when_stalled(transport: asyncio.BaseTransport | None, limit: float) -> Iterator[None]:
    """While the body is sent: cut the connection once its client has taken no byte for
    `limit` seconds. Where the socket cannot tell (not TCP, not Linux), nothing is watched."""
    sock = None if transport is None else transport.get_extra_info("socket")
    if transport is None or sock is None or _acked(sock) is None:
        yield
        return
    watch = _Watch(transport, sock, limit)
    try:
        yield
    finally:
        watch.stop()


class _Watch:
    """Samples what the client acknowledged every quarter of `limit` (a timer, not a task)."""

    def __init__(self, transport: asyncio.BaseTransport, sock: socket.socket, limit: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._sock = sock
        self._limit = limit
        self._acked = _acked(sock)
        self._since = self._loop.time()
        self._timer = self._loop.call_later(limit / 4, self._check)

    def stop(self) -> None:
        self._timer.cancel()

    def _check(self) -> None:
        acked = _acked(self._sock)
        if acked is None:
            return
        now = self._loop.time()
        if acked != self._acked:
            self._acked, self._since = acked, now
        elif now - self._since >= self._limit:
            log.warning("client took no bytes; response cut off", extra={"seconds": self._limit})
            # shutdown first: a sender thread's duplicate of the socket would keep it open
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._transport.abort()
            return
        self._timer = self._loop.call_later(self._limit / 4, self._check)


def _acked(sock: socket.socket) -> int | None:
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, AttributeError):
        return None
    if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])
