"""The Agent owns every long-lived object and starts and stops them in dependency order."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AsyncExitStack
from types import TracebackType

from dfagent.admin import AdminServer
from dfagent.config import Config
from dfagent.engine.fetcher import Engine
from dfagent.errors import StartupError
from dfagent.metrics import Metrics
from dfagent.origin.client import OriginClient
from dfagent.proxy.server import ProxyServer
from dfagent.storage.store import PieceStore

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    """`async with Agent(config) as agent:` runs the agent until the block ends.

    Start order: store -> origin client -> engine -> proxy -> health/metrics. Exit runs in
    reverse; if start fails part way, only what started is stopped.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self._stack: AsyncExitStack | None = None
        self.proxy: ProxyServer | None = None
        self.admin: AdminServer | None = None

    async def __aenter__(self) -> Agent:
        config = self.config
        async with AsyncExitStack() as stack:
            try:
                store = await stack.enter_async_context(PieceStore(config.storage, self.metrics))
            except OSError as exc:
                raise StartupError(f"storage.dir: cannot use {config.storage.dir}: {exc}") from exc
            origin = await stack.enter_async_context(OriginClient(config.origin, self.metrics))
            engine = await stack.enter_async_context(Engine(store, origin, self.metrics))

            self.proxy = ProxyServer(config.proxy, engine, origin, self.metrics)
            await self.proxy.start()
            stack.push_async_callback(self.proxy.stop)

            async def storage_ready() -> None:
                await store.index.ping()
                if not await asyncio.to_thread(store.writable):
                    raise OSError(f"{config.storage.dir} is not writable")

            self.admin = AdminServer(
                config.health.listen,
                config.metrics.listen,
                self.metrics,
                {"storage": storage_ready},
            )
            await self.admin.start()
            stack.push_async_callback(self.admin.stop)
            self.admin.ready = True
            self._stack = stack.pop_all()
        log.info(
            "ready",
            extra={
                "pid": os.getpid(),
                "proxy": self.proxy.port,
                "admin": ",".join(map(str, self.admin.ports)),
            },
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.admin is not None:
            self.admin.ready = False  # readiness goes down first, while connections drain
        if self._stack is not None:
            await self._stack.aclose()
        log.info("stopped")
