"""CONNECT: the first request on a client connection may ask for a blind TCP tunnel.

`FrontProtocol` reads the start of every new connection. A CONNECT head is answered here and
the connection becomes a byte pipe to `host:port`; anything else is handed, with the bytes
read so far, to the aiohttp request handler that serves ordinary proxy requests. A tunnel in
which no byte moves for `proxy.tunnel_idle_timeout` (none read from either side, none taken by
either side) is cut off: a side that stops reading stops the bytes towards it, so it counts as
idle too.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import weakref
from collections.abc import Callable
from typing import cast

from dfagent.proxy.certs import LeafCertificates
from dfagent.proxy.stall import IdleWatch
from dfagent.tasks import TaskOwner

__all__ = ["FrontProtocol", "Interceptor", "TunnelRegistry"]

log = logging.getLogger(__name__)

_CONNECT = b"CONNECT "
_MAX_HEAD = 16 * 1024
_AUTHORITY = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.\-_]+)):(?P<port>\d{1,5})"
)


class _Pipe(asyncio.Protocol):
    """One side of a tunnel: what arrives on this side's transport is written to the peer's."""

    def __init__(self, registry: TunnelRegistry) -> None:
        self._registry = registry
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.got_eof = False
        self.idle: IdleWatch | None = None  # shared with the peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)
        self._registry.open.add(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.idle is not None:
            self.idle.moved()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None or peer.transport is None or peer.got_eof:
            self.close_both()
            return False
        if peer.transport.can_write_eof():
            peer.transport.write_eof()
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self._registry.open.discard(self.transport)
        self.close_both()

    def pause_writing(self) -> None:  # our side is backed up: stop reading the other side
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def close_both(self) -> None:
        if self.idle is not None:
            self.idle.stop()
        for side in (self, self.peer):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.close()


class _HandshakeHold(asyncio.Protocol):
    """The application protocol of an intercepted connection until `start_tls` returns: the
    decrypted bytes that arrive together with the end of the handshake are delivered before
    that, and are kept here for the HTTP handler."""

    def __init__(self) -> None:
        self.early = bytearray()
        self.got_eof = False

    def data_received(self, data: bytes) -> None:
        self.early += data

    def eof_received(self) -> bool:
        self.got_eof = True
        return True


class Interceptor:
    """Which CONNECT hosts to terminate TLS for, and the authority behind each such
    connection (the HTTP handler looks it up by transport)."""

    def __init__(self, patterns: tuple[str, ...], certificates: LeafCertificates) -> None:
        self._patterns = [re.compile(p) for p in patterns]
        self.certificates = certificates
        self.authority: weakref.WeakKeyDictionary[asyncio.BaseTransport, str] = (
            weakref.WeakKeyDictionary()
        )

    def wants(self, host: str) -> bool:
        return any(p.search(host) for p in self._patterns)


class TunnelRegistry:
    """Open tunnel transports, so that shutdown can close them; and how tunnels are opened
    and kept (`idle_timeout`: a tunnel through which nothing moves this long is closed)."""

    def __init__(
        self,
        connect_timeout: float,
        idle_timeout: float,
        on_result: Callable[[int], None],
        intercept: Interceptor | None = None,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.on_result = on_result
        self.intercept = intercept
        self.open: set[asyncio.Transport] = set()
        self.tasks = TaskOwner("tunnel")

    async def aclose(self) -> None:
        await self.tasks.aclose()
        for transport in list(self.open):
            transport.abort()


class FrontProtocol(asyncio.Protocol):
    """Reads the first request head of a connection (within `head_timeout`, at most 16 KiB),
    then tunnels a CONNECT or hands everything to the HTTP server."""

    def __init__(
        self,
        http_factory: Callable[[], asyncio.Protocol],
        tunnels: TunnelRegistry,
        head_timeout: float,
    ) -> None:
        self._http_factory = http_factory
        self._tunnels = tunnels
        self._head_timeout = head_timeout
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._opening: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self._head_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._refuse(408, "the request head did not arrive in time")

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._opening is not None:
            return  # early tunnel bytes; sent on once the tunnel is up
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._refuse(431, "request head too large")
            return
        if self._timer is not None:
            self._timer.cancel()
        if not self._buffer.startswith(_CONNECT):
            self._hand_off()
            return
        head = bytes(self._buffer[:head_end]).decode("latin-1")
        del self._buffer[: head_end + 4]
        self._start_tunnel(head)

    def _hand_off(self) -> None:
        assert self._transport is not None
        handler = self._http_factory()
        self._transport.set_protocol(handler)
        handler.connection_made(self._transport)
        handler.data_received(bytes(self._buffer))
        self._buffer.clear()

    def _start_tunnel(self, head: str) -> None:
        request_line = head.split("\r\n", 1)[0]
        parts = request_line.split(" ")
        match = _AUTHORITY.fullmatch(parts[1]) if len(parts) == 3 else None
        if match is None or not parts[2].startswith("HTTP/1."):
            self._refuse(400, "CONNECT needs host:port")
            return
        port = int(match.group("port"))
        if not 0 < port < 65536:
            self._refuse(400, "CONNECT port out of range")
            return
        host = match.group("v6") or match.group("host")
        assert self._transport is not None
        self._transport.pause_reading()
        intercept = self._tunnels.intercept
        if intercept is not None and intercept.wants(host):
            opening = self._terminate(intercept, host, port)
        else:
            opening = self._open(host, port)
        self._opening = self._tunnels.tasks.spawn(opening, name="connect")

    async def _terminate(self, intercept: Interceptor, host: str, port: int) -> None:
        """Answer the CONNECT, take the TLS handshake with a leaf certificate for `host`, and
        hand the decrypted connection to the HTTP server as requests for https://host:port."""
        assert self._transport is not None
        try:
            context = await intercept.certificates.context_for(host)
        except (OSError, ValueError) as exc:
            log.warning("cannot make a certificate", extra={"target": host, "error": str(exc)})
            self._refuse(502, f"cannot intercept {host}")
            return
        if self._buffer:  # TLS bytes before our 200: not a client we can talk to
            self._refuse(400, "data before the tunnel was established")
            return
        self._transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._tunnels.on_result(200)
        hold = _HandshakeHold()
        loop = asyncio.get_running_loop()
        try:
            inner = await loop.start_tls(
                self._transport, hold, context, server_side=True, ssl_handshake_timeout=10
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("intercepted TLS handshake failed", extra={"target": host, "error": str(exc)})
            self._transport.close()
            return
        if inner is None or inner.is_closing():
            return
        intercept.authority[inner] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        handler = self._http_factory()
        inner.set_protocol(handler)
        handler.connection_made(inner)
        if hold.early:
            handler.data_received(bytes(hold.early))
        if hold.got_eof:
            handler.eof_received()

    async def _open(self, host: str, port: int) -> None:
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        client = _Pipe(self._tunnels)
        try:
            async with asyncio.timeout(self._tunnels.connect_timeout):
                _, upstream = await loop.create_connection(lambda: _Pipe(self._tunnels), host, port)
        except UnicodeError:  # the IDNA codec: an empty label, or one over 63 characters
            log.warning("CONNECT refused", extra={"target": f"{host}:{port}"})
            self._refuse(400, f"not a host name: {host}")
            return
        except (OSError, TimeoutError) as exc:
            log.warning("CONNECT failed", extra={"target": f"{host}:{port}", "error": str(exc)})
            self._refuse(502, f"cannot connect to {host}:{port}")
            return
        if self._transport.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        client.peer, upstream.peer = upstream, client
        assert upstream.transport is not None
        client.idle = upstream.idle = IdleWatch(
            [self._transport, upstream.transport],
            self._tunnels.idle_timeout,
            "nothing moved through a tunnel; cut off",
            level=logging.INFO,  # an idle tunnel is no fault
            target=f"{host}:{port}",
        )
        self._transport.set_protocol(client)
        client.connection_made(self._transport)
        self._transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self._tunnels.on_result(200)
        if self._buffer:
            assert upstream.transport is not None
            upstream.transport.write(bytes(self._buffer))
            self._buffer.clear()
        self._transport.resume_reading()

    def _refuse(self, status: int, reason: str) -> None:
        assert self._transport is not None
        if self._transport.is_closing():
            return
        body = reason.encode() + b"\n"
        self._transport.write(
            f"HTTP/1.1 {status} {_REASONS[status]}\r\nX-Dragonfly-Error-Type: proxy\r\n"
            f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        self._transport.close()
        self._tunnels.on_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()


_REASONS = {
    400: "Bad Request",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
}
