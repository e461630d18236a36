"""Binding listeners with errors that say what to do, and draining them on the way out:
shared by every server of the agent."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from ssl import SSLContext

from aiohttp import web

from dfagent.configtypes import ListenAddress
from dfagent.errors import StartupError

__all__ = ["bind", "bound_address", "drain", "local_address_towards"]

log = logging.getLogger(__name__)


async def bind(
    name: str,
    address: ListenAddress,
    factory: Callable[[], asyncio.BaseProtocol],
    ssl: SSLContext | None = None,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            factory, address.host, address.port, reuse_address=True, backlog=1024, ssl=ssl
        )
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = f"; another process (a second agent or dfdaemon?) holds it: change {name}.listen"
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = f"; no local interface has that address: change {name}.listen"
        raise StartupError(f"{name}: cannot listen on {address}: {exc.strerror}{hint}") from exc
    log.info("listening", extra={"server": name, "address": bound_address(server)})
    return server


def bound_address(server: asyncio.Server) -> str:
    host, port = server.sockets[0].getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def drain(server: asyncio.Server | None, http: web.Server | None, grace: float) -> None:
    """Stop accepting; close idle keep-alive connections at once (clients such as nydusd keep
    them open between requests) and give responses in flight up to `grace` seconds to finish
    before they are cut. Each connection closes as soon as its response is done."""
    if server is not None:
        server.close()
    if http is None:
        return
    for connection in http.connections:
        connection.close()  # idle: now; serving a request: once its response is sent
    await http.shutdown(grace)


def local_address_towards(address: ListenAddress) -> str | None:
    """The local address that routes to `address` (no packet is sent; a name is resolved,
    so call it off the event loop), or None when nothing routes there."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address.host, address.port or 9))
            return str(probe.getsockname()[0])
    except OSError:
        return None
