"""Who is in the swarm: a static list and/or the records of a DNS name, refreshed."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from dfagent.configtypes import ListenAddress
from dfagent.serving import local_address_towards
from dfagent.swarm.config import PeerConfig, SwarmConfig

__all__ = ["Membership", "resolve"]

log = logging.getLogger(__name__)


def _format(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


Resolver = Callable[[str, int], Awaitable[list[str]]]


async def resolve(name: str, port: int) -> list[str]:
    """The addresses (IPv4 and IPv6) that `name` resolves to."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Membership:
    """The current members as `host:port` strings (sorted), this agent among them."""

    def __init__(
        self,
        swarm: SwarmConfig,
        peer: PeerConfig,
        peer_port: int,
        *,
        resolver: Resolver = resolve,
    ) -> None:
        self._swarm = swarm
        self._resolver = resolver
        self._port = peer_port
        self._static = [str(ListenAddress.parse(p)) for p in swarm.peers]
        self._resolved: list[str] = []
        self.me = swarm.advertise or ""
        self.changed = asyncio.Event()

    async def start(self) -> None:
        await self.refresh()
        if not self.me:
            self.me = _format(await self._local_address(), self._port)
        log.info("swarm membership", extra={"me": self.me, "members": ",".join(self.members())})

    def members(self) -> list[str]:
        members = set(self._static) | set(self._resolved)
        if self.me:
            members.add(self.me)
        return sorted(members)

    def others(self) -> list[str]:
        return [m for m in self.members() if m != self.me]

    async def refresh(self) -> None:
        if self._swarm.dns is None:
            return
        try:
            addresses = await self._resolver(self._swarm.dns, self._port)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a name IDNA cannot encode
            # Keep the members we had: DNS hiccups must not empty the swarm.
            log.warning(
                "cannot resolve swarm.dns", extra={"dns": self._swarm.dns, "error": str(exc)}
            )
            return
        resolved = sorted({_format(address, self._port) for address in addresses})
        if resolved != self._resolved:
            self._resolved = resolved
            self.changed.set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._swarm.refresh)
            await self.refresh()

    async def _local_address(self) -> str:
        """The local address that routes to the first other member (no packet is sent; a
        member's host name is resolved, in a thread)."""
        for member in self.members():
            address = ListenAddress.parse(member)
            local = await asyncio.to_thread(local_address_towards, address)
            if local is not None:
                return local
        return "127.0.0.1"
