"""Connections through which nothing moves for a while are cut off: a client that takes no byte
of a response must not hold its connection, nor the blob it pins against eviction, for good;
nor may a CONNECT tunnel in which neither side sends or takes anything.

Progress is what the other end acknowledges (Linux's `tcpi_bytes_acked`), whichever way the
bytes go out (`sendfile` on the loop, in a sender thread, or written from memory), and what the
owner of the watch reports it read (`IdleWatch.moved`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Iterator

__all__ = ["IdleWatch", "cut_when_stalled"]

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
    watch = IdleWatch([transport], limit, "client took no bytes; response cut off")
    try:
        yield
    finally:
        watch.stop()


class IdleWatch:
    """Cuts `transports` (shut down, then aborted: unsent bytes do not hold them open) once
    nothing moved for `limit` seconds: no byte acknowledged by the other end of any of them,
    and no `moved()` call. Samples every quarter of `limit` (a timer, not a task)."""

    def __init__(
        self,
        transports: list[asyncio.BaseTransport],
        limit: float,
        message: str,
        *,
        level: int = logging.WARNING,
        **context: str,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._transports = transports
        self._limit = limit
        self._message = message
        self._level = level
        self._context = context
        self._moved = 0
        self._progress = self._sample()
        self._since = self._loop.time()
        self._timer = self._loop.call_later(limit / 4, self._check)

    def moved(self) -> None:
        """Bytes were read from one of the transports."""
        self._moved += 1

    def stop(self) -> None:
        self._timer.cancel()

    def _sample(self) -> int:
        acked = (_acked(t.get_extra_info("socket")) for t in self._transports)
        return self._moved + sum(a for a in acked if a is not None)

    def _check(self) -> None:
        progress, now = self._sample(), self._loop.time()
        if progress != self._progress:
            self._progress, self._since = progress, now
        elif now - self._since >= self._limit:
            log.log(self._level, self._message, extra={"seconds": self._limit, **self._context})
            for transport in self._transports:
                # shutdown first: a sender thread's duplicate of the socket would keep it open
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                transport.abort()
            return
        self._timer = self._loop.call_later(self._limit / 4, self._check)


def _acked(sock: socket.socket | None) -> int | None:
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_BYTES)
    except (OSError, AttributeError):
        return None
    if len(info) < _BYTES_ACKED_AT + _BYTES_ACKED.size:
        return None
    return int(_BYTES_ACKED.unpack_from(info, _BYTES_ACKED_AT)[0])
