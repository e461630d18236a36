"""A member sent to its parent in a piece's stripe tree before the parent has asked for the
piece (Directory._from_parent): the parent's peer server holds the request until the piece
begins to arrive there, then passes it on as it arrives; a piece that does not begin to
arrive within PARENT_WAIT is refused, and a blob the parent does not read is not waited for. A
child filling the whole blob (`tree`) is waited for a moment even before the parent begins the
blob, and the whole time once it does."""

from __future__ import annotations

import asyncio
import hashlib
import time

import aiohttp
import pytest
from yarl import URL

from dfagent.configtypes import ByteSize, ListenAddress
from dfagent.core.digest import Digest
from dfagent.engine.access import AccessGate
from dfagent.engine.fetcher import Engine
from dfagent.engine.network import Answer, PeerPiece
from dfagent.engine.proofs import ChunkProofs
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore
from dfagent.swarm import server as server_module
from dfagent.swarm.directory import Directory
from dfagent.swarm.server import PeerServer

HOME = "http://registry:5000"
TOKEN = "parent-token"
PIECE = 64 * 1024
DATA = bytes(range(256)) * (3 * PIECE // 256)
DIGEST = Digest(hashlib.sha256(DATA).hexdigest())
SOURCE = BlobSource(URL(f"{HOME}/v2/app/blobs/{DIGEST}"), DIGEST, None)


def _piece(index: int) -> bytes:
    return DATA[index * PIECE : (index + 1) * PIECE]


class HeadOnlyOrigin:
    async def blob_size(self, source: BlobSource, expected: int | None = None) -> int:
        return len(DATA)


class TricklingHolder:
    """The parent's own source: a holder that sends each piece in two halves, a moment
    apart, telling the engine each half as it arrives."""

    async def describe(self, digest_hex: str, origin: str) -> None:
        return None

    async def lookup(self, blob, source, indices, *, stalled=None) -> dict[int, Answer]:
        return {
            i: Answer(hashlib.sha256(_piece(i)).digest(), ("holder:1",), False, None)
            for i in indices
        }

    async def fetch(self, blob, index, answer, *, check=None, arriving=None) -> PeerPiece:
        data = _piece(index)
        half = len(data) // 2
        for offset, part in ((0, data[:half]), (half, data[half:])):
            await asyncio.sleep(0.05)
            if arriving is not None:
                arriving(offset, part)
        return PeerPiece(data, hashlib.sha256(data).digest())

    async def progress(self, peer, blob, index) -> int:
        raise AssertionError("the holder always delivers")

    def release(self, blob, indices) -> None:
        raise AssertionError("no origin fetch was handed out")

    def announce(self, blob, index, sha256) -> None:
        pass

    async def prove_whole(self, blob, source, fill) -> bool:
        return False


@pytest.fixture
async def parent(tmp_path):
    """(engine, peer server port) of a parent agent that has opened the blob and fetched
    nothing of it yet."""
    metrics = Metrics()
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(PIECE), scrub_interval=None)
    async with PieceStore(config, metrics) as store:
        origin = HeadOnlyOrigin()
        access = AccessGate(origin, store, enabled=False, ttl=300.0)  # type: ignore[arg-type]
        async with Engine(  # type: ignore[arg-type]
            store,
            origin,
            metrics,
            access=access,
            proofs=ChunkProofs(store, metrics),
            network=TricklingHolder(),
        ) as engine:
            server = PeerServer(
                ListenAddress("127.0.0.1", 0),
                TOKEN,
                store,
                Directory(holder_ttl=30, lease_ttl=10),
                metrics,
                max_uploads=4,
                slot_wait=0.05,
                upload_bandwidth=None,
            )
            server.engine_ready(None, engine)  # type: ignore[arg-type]
            await server.start()
            try:
                yield engine, server.port
            finally:
                await server.stop()


async def _ask(
    port: int, digest: Digest, index: int, *, tree: bool = False
) -> tuple[int, bytes, float]:
    """(status, body, seconds taken) of a child's request for a piece (`tree`: from a child
    filling the whole blob)."""
    started = time.monotonic()
    params = {"origin": HOME, **({"tree": "1"} if tree else {})}
    async with (
        aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session,
        session.get(
            f"http://127.0.0.1:{port}/v1/pieces/sha256:{digest.hex}/{index}", params=params
        ) as response,
    ):
        return response.status, await response.read(), time.monotonic() - started


async def _read_whole(engine: Engine) -> None:
    blob = await engine.blob(SOURCE, for_client=False)
    with blob.pinned():
        async for _ in engine.segments(blob, SOURCE, 0, len(DATA) - 1):
            pass


async def test_a_child_early_for_its_parent_gets_the_piece_once_it_arrives_there(parent):
    engine, port = parent
    await engine.blob(SOURCE, for_client=False)  # the parent reads the blob...
    early = asyncio.create_task(_ask(port, DIGEST, 1))  # ...not piece 1 yet
    await asyncio.sleep(0.1)
    assert not early.done(), "answered before the piece began to arrive"
    await _read_whole(engine)
    status, body, _ = await early
    assert (status, body) == (200, _piece(1))


async def test_a_piece_that_does_not_begin_to_arrive_is_refused_after_the_wait(parent, monkeypatch):
    engine, port = parent
    monkeypatch.setattr(server_module, "PARENT_WAIT", 0.3)
    await engine.blob(SOURCE, for_client=False)
    status, _, took = await _ask(port, DIGEST, 2)
    assert status == 404
    assert took >= 0.3


async def test_a_blob_the_parent_does_not_read_is_not_waited_for(parent):
    _, port = parent
    other = Digest(hashlib.sha256(b"another blob").hexdigest())
    status, _, took = await _ask(port, other, 0)
    assert status == 404
    assert took < server_module.PARENT_WAIT / 2


async def test_a_whole_fill_s_request_for_a_blob_the_parent_has_not_begun_waits_a_moment(parent):
    """A member reading a blob alone in a large swarm does not wait PARENT_WAIT for each
    parent that does not read it."""
    _, port = parent
    status, _, took = await _ask(port, DIGEST, 0, tree=True)
    assert status == 404
    assert server_module.UNSEEN_PARENT_WAIT <= took < server_module.PARENT_WAIT / 2


async def test_a_whole_fill_s_request_is_held_on_once_the_parent_begins_the_blob(
    parent, monkeypatch
):
    engine, port = parent
    monkeypatch.setattr(server_module, "UNSEEN_PARENT_WAIT", 0.3)
    monkeypatch.setattr(server_module, "PARENT_WAIT", 5.0)
    early = asyncio.create_task(_ask(port, DIGEST, 1, tree=True))
    await asyncio.sleep(0.05)
    await engine.blob(SOURCE, for_client=False)  # the parent begins the blob...
    await asyncio.sleep(0.4)
    assert not early.done(), "refused once the first moment was over"
    await _read_whole(engine)  # ...and reads piece 1 later
    status, body, _ = await early
    assert (status, body) == (200, _piece(1))
