"""The Agent owns every long-lived object and starts and stops them in dependency order."""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType

from dfagent.admin import AdminServer, ReadinessCheck
from dfagent.config import Config
from dfagent.configtypes import ListenAddress
from dfagent.control import ControlServer
from dfagent.engine.access import AccessGate
from dfagent.engine.fetcher import Engine
from dfagent.engine.network import PieceNetwork
from dfagent.engine.prefetch import Prefetcher
from dfagent.engine.proofs import ChunkProofs
from dfagent.errors import StartupError
from dfagent.maintenance import Maintenance
from dfagent.metrics import Metrics
from dfagent.origin.client import OriginClient
from dfagent.preheat.api import PreheatApi
from dfagent.preheat.service import PreheatService
from dfagent.proxy.server import ProxyServer
from dfagent.storage.gc import GarbageCollector
from dfagent.storage.scrub import Scrubber
from dfagent.storage.store import PieceStore
from dfagent.swarm.client import PeerClient
from dfagent.swarm.directory import Directory
from dfagent.swarm.dragonfly.host import HostAnnouncer, identity_of
from dfagent.swarm.dragonfly.member import DragonflyMember
from dfagent.swarm.dragonfly.parents import ParentLinks
from dfagent.swarm.dragonfly.scheduler import ANSWER_SECONDS, Schedulers
from dfagent.swarm.dragonfly.seed import Seeder
from dfagent.swarm.dragonfly.upload import HeldPieces, UploadServer
from dfagent.swarm.membership import Membership
from dfagent.swarm.server import PeerServer
from dfagent.swarm.swarm import Swarm
from dfagent.swarm.tls import client_context, server_context
from dfagent.tasks import TaskOwner

__all__ = ["Agent"]

log = logging.getLogger(__name__)

_LEASE_SECONDS = 15.0  # a peer told to fetch a piece from the origin has this long to announce it


def _read_token(path: str) -> str:
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise StartupError(f"peer.token_file: cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise StartupError(f"peer.token_file: {path} is not UTF-8 text") from exc
    if len(token) < 16:
        raise StartupError(f"peer.token_file: the token in {path} is shorter than 16 characters")
    return token


def _address(host: str, port: int) -> str:
    return str(ListenAddress(host, port))


class Agent:
    """`async with Agent(config) as agent:` runs the agent until the block ends.

    Start order: store -> origin client -> engine -> GC and scrub -> control socket -> proxy
    -> health/metrics. Exit runs in reverse; if start fails part way, only what started is
    stopped.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()
        self._stack: AsyncExitStack | None = None
        self._tasks = TaskOwner("agent")
        self.proxy: ProxyServer | None = None
        self.peer: PeerServer | None = None
        self.admin: AdminServer | None = None
        self._upload: UploadServer | None = None  # Dragonfly mode's upload servers

    async def __aenter__(self) -> Agent:
        config = self.config
        async with AsyncExitStack() as stack:
            try:
                store = await stack.enter_async_context(PieceStore(config.storage, self.metrics))
            except OSError as exc:
                raise StartupError(f"storage.dir: cannot use {config.storage.dir}: {exc}") from exc
            origin = await stack.enter_async_context(OriginClient(config.origin, self.metrics))
            token = None
            if config.swarm.enabled and config.peer.token_file is not None:
                token = _read_token(config.peer.token_file)
            swarm = await self._start_swarm(stack, store, token) if config.swarm.enabled else None
            network: PieceNetwork | None = swarm
            readiness: dict[str, ReadinessCheck] = {}
            if config.swarm.mode == "dragonfly":
                network = await self._join_dragonfly(stack, store, readiness)
            proofs = ChunkProofs(store, self.metrics)
            store.trust_listeners.append(proofs.trusted)
            engine = await stack.enter_async_context(
                Engine(
                    store,
                    origin,
                    self.metrics,
                    access=AccessGate(
                        origin,
                        store,
                        enabled=config.auth.check_clients,
                        ttl=config.auth.cache_ttl,
                    ),
                    proofs=proofs,
                    verify_reads=config.storage.verify_reads,
                    background_bandwidth=config.origin.prefetch_bandwidth,
                    network=network,
                )
            )
            prefetcher = await stack.enter_async_context(Prefetcher(engine))
            if isinstance(network, DragonflyMember) and config.dragonfly.seed:
                assert self._upload is not None
                self._upload.serve_seeds(Seeder(engine, prefetcher, network.back_to_source))
            preheat = await stack.enter_async_context(
                PreheatService(engine, prefetcher, store, origin, metrics=self.metrics, swarm=swarm)
            )
            if self.peer is not None:
                self.peer.engine_ready(preheat, engine)
            api = PreheatApi(preheat, token)

            gc = GarbageCollector(store, config.storage, self.metrics)
            scrubber = Scrubber(store, config.storage, self.metrics)
            self._tasks.spawn(gc.run(), name="gc")
            self._tasks.spawn(scrubber.run(), name="scrub")
            stack.push_async_callback(self._tasks.aclose)
            control = ControlServer(
                store.root,
                Maintenance(
                    store,
                    gc,
                    scrubber,
                    running=self._describe,
                    preheat_jobs=lambda: [job.to_json() for job in preheat.jobs()],
                ),
                api=api.handle,
            )
            try:
                await control.start()
            except OSError as exc:
                raise StartupError(
                    f"storage.dir: cannot open the control socket {control.path}: {exc}"
                ) from exc
            stack.push_async_callback(control.stop)

            self.proxy = ProxyServer(config.proxy, engine, prefetcher, origin, self.metrics)
            await self.proxy.start()
            stack.push_async_callback(self.proxy.stop)

            async def storage_ready() -> str | None:
                await store.index.ping()
                if not await asyncio.to_thread(store.writable):
                    raise OSError(f"{config.storage.dir} is not writable")
                return None

            self.admin = AdminServer(
                config.health.listen,
                config.metrics.listen,
                self.metrics,
                {"storage": storage_ready, **readiness},
                api=api.over_network,
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
                "peer": self.peer.port if self.peer is not None else "-",
            },
        )
        return self

    def _describe(self) -> dict[str, object]:
        """Where this agent listens (for `dfagent status` and `dfagent get`)."""
        config = self.config
        return {
            "pid": os.getpid(),
            "proxy": _address(config.proxy.listen.host, self.proxy.port) if self.proxy else None,
            "peer": _address(config.peer.listen.host, self.peer.port) if self.peer else None,
        }

    async def _start_swarm(
        self, stack: AsyncExitStack, store: PieceStore, token: str | None
    ) -> Swarm:
        """Peer server first (its port is this agent's identity), then membership, then the
        swarm's own loops."""
        config = self.config
        tls = config.peer.tls
        if config.peer.token_file is None and tls is None:
            raise StartupError("peer.token_file or peer.tls: one is required with swarm members")
        refresh = config.swarm.refresh
        directory = Directory(holder_ttl=3 * refresh, lease_ttl=_LEASE_SECONDS)
        self.peer = PeerServer(
            config.peer.listen,
            token,
            store,
            directory,
            self.metrics,
            max_uploads=config.peer.max_uploads,
            # no use holding a request longer than its sender waits before asking elsewhere too
            slot_wait=config.peer.hedge_after,
            upload_bandwidth=config.peer.upload_bandwidth,
            tls=server_context(tls) if tls is not None else None,
        )
        await self.peer.start()
        stack.push_async_callback(self.peer.stop)
        membership = Membership(config.swarm, config.peer, self.peer.port)
        await membership.start()
        client = await stack.enter_async_context(
            PeerClient(
                token,
                config.peer.connect_timeout,
                config.peer.read_timeout,
                tls=client_context(tls) if tls is not None else None,
            )
        )
        swarm = Swarm(
            membership,
            directory,
            client,
            store,
            self.metrics,
            refresh=refresh,
            hedge_after=config.peer.hedge_after,
        )
        stack.push_async_callback(swarm.aclose)
        store.trust_listeners.append(swarm.announce_blob)
        self._tasks.spawn(swarm.run(), name="swarm")
        self._tasks.spawn(membership.run(), name="membership")
        return swarm

    async def _join_dragonfly(
        self,
        stack: AsyncExitStack,
        store: PieceStore,
        readiness: dict[str, ReadinessCheck],
    ) -> DragonflyMember:
        """Upload servers first (the host is announced with their ports), then the host,
        then the member the engine reads through."""
        config = self.config.dragonfly
        schedulers = Schedulers(
            config.schedulers,
            config.tls,
            self.metrics,
            answer_within=max(ANSWER_SECONDS, config.schedule_timeout),
        )
        stack.push_async_callback(schedulers.aclose)
        identity = await asyncio.to_thread(identity_of, config)
        held = HeldPieces(store)
        announcer = HostAnnouncer(
            config, identity, schedulers, proxy_port=self.config.proxy.listen.port
        )
        upload = UploadServer(
            config.upload,
            config.vortex,
            held,
            host=announcer.host,
            ip=identity.ip,
            metrics=self.metrics,
        )
        await upload.start()
        stack.push_async_callback(upload.stop)
        self._upload = upload
        announcer.upload_port = upload.upload_port
        await announcer.announce()
        stack.push_async_callback(announcer.leave)
        links = ParentLinks()
        stack.push_async_callback(links.aclose)
        member = DragonflyMember(
            config, identity, schedulers, links=links, held=held, store=store, metrics=self.metrics
        )
        stack.push_async_callback(member.aclose)
        store.trust_listeners.append(member.trusted)
        self._tasks.spawn(announcer.run(), name="dragonfly-host")

        async def scheduler_reachable() -> str | None:
            if schedulers.reachable:
                return None
            return "no scheduler answers; reads go to the origin"

        readiness["dragonfly"] = scheduler_reachable
        log.info("joined Dragonfly", extra={"host": identity.host_id,
                 "upload": upload.upload_port, "vortex": upload.tcp_port})  # fmt: skip
        return member

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
