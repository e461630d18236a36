"""This agent as a Dragonfly host: who it is, announced to the schedulers at start and every
`announce_interval`, and deleted when it stops."""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import socket

from dragonfly_api import common_pb2

from dfagent.configtypes import ListenAddress
from dfagent.dragonfly.ids import host_id
from dfagent.serving import local_address_towards
from dfagent.swarm.dragonfly.config import DragonflyConfig
from dfagent.swarm.dragonfly.member import HostIdentity
from dfagent.swarm.dragonfly.scheduler import SchedulerError, Schedulers

__all__ = ["HostAnnouncer", "identity_of"]

log = logging.getLogger(__name__)

_HOST_NORMAL = 0
_HOST_SUPER_SEED = 1  # Dragonfly's "super" seed peer type


def identity_of(config: DragonflyConfig) -> HostIdentity:
    """Who this host is to the cluster (resolves names: call it off the event loop)."""
    hostname = config.hostname or socket.gethostname()
    ip = config.ip or local_address_towards(ListenAddress.parse(config.schedulers[0]))
    ip = ip or "127.0.0.1"
    return HostIdentity(host_id(ip, hostname, seed=config.seed), hostname, ip)


class HostAnnouncer:
    def __init__(
        self,
        config: DragonflyConfig,
        identity: HostIdentity,
        schedulers: Schedulers,
        *,
        proxy_port: int,
    ) -> None:
        self._config = config
        self._identity = identity
        self._schedulers = schedulers
        self._proxy_port = proxy_port
        self.upload_port = 0  # set once the upload server listens

    def host(self) -> common_pb2.Host:
        identity = self._identity
        return common_pb2.Host(
            id=identity.host_id,
            type=_HOST_SUPER_SEED if self._config.seed else _HOST_NORMAL,
            hostname=identity.hostname,
            ip=identity.ip,
            port=self.upload_port,
            download_port=self.upload_port,
            proxy_port=self._proxy_port,
            os=platform.system().lower(),
            platform=platform.system().lower(),
            kernel_version=platform.release(),
            cpu=common_pb2.CPU(logical_count=os.cpu_count() or 1),
            disable_shared=False,
        )

    async def announce(self) -> bool:
        """Announce the host once; False (logged) when no scheduler took it."""
        try:
            await self._schedulers.announce_host(self.host(), self._config.announce_interval)
        except SchedulerError as exc:
            log.warning("no scheduler took this host; reads go to the origin until one does",
                        extra={"error": str(exc)})  # fmt: skip
            return False
        return True

    async def run(self) -> None:
        """Announce again every interval (sooner while no scheduler has taken the host)."""
        announced = await self.announce()
        while True:
            await asyncio.sleep(self._config.announce_interval if announced else 5.0)
            announced = await self.announce()

    async def leave(self) -> None:
        await self._schedulers.delete_host(self._identity.host_id)
