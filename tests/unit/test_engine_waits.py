"""A reader the network tells to wait (its parent in a piece's stripe tree is about to
receive the piece) asks again shortly, and takes the piece from whom it is named then: the
origin sends nothing."""

from __future__ import annotations

import hashlib

from yarl import URL

from dfagent.configtypes import ByteSize
from dfagent.core.digest import Digest
from dfagent.engine.access import AccessGate
from dfagent.engine.fetcher import Engine
from dfagent.engine.network import Answer, PeerPiece
from dfagent.engine.proofs import ChunkProofs
from dfagent.metrics import Metrics
from dfagent.origin.client import BlobSource
from dfagent.storage.config import StorageConfig
from dfagent.storage.store import PieceStore

HOME = "http://registry:5000"
PIECE = 64 * 1024
DATA = bytes(range(256)) * (3 * PIECE // 256)
DIGEST = Digest(hashlib.sha256(DATA).hexdigest())


class HeadOnlyOrigin:
    """A registry (in the OriginClient's place) that answers a HEAD, and nothing else."""

    async def blob_size(self, source: BlobSource, expected: int | None = None) -> int:
        return len(DATA)


class WaitingNetwork:
    """A home that answers wait to the first two lookups of each piece, then names a holder,
    which delivers the piece's bytes."""

    def __init__(self) -> None:
        self.lookups: dict[int, int] = {}
        self.fetched: list[int] = []
        self.announced: list[int] = []

    async def describe(self, digest_hex: str, origin: str) -> None:
        return None

    async def lookup(self, blob, source, indices, *, stalled=None) -> dict[int, Answer]:
        answers = {}
        for index in indices:
            self.lookups[index] = self.lookups.get(index, 0) + 1
            sha256 = hashlib.sha256(DATA[index * PIECE : (index + 1) * PIECE]).digest()
            if self.lookups[index] <= 2:
                answers[index] = Answer(sha256, (), False, None, wait=True)
            else:
                answers[index] = Answer(sha256, ("parent:1",), False, None)
        return answers

    async def fetch(self, blob, index, answer, *, check=None, arriving=None) -> PeerPiece:
        assert answer.holders == ("parent:1",)
        self.fetched.append(index)
        data = DATA[index * PIECE : (index + 1) * PIECE]
        return PeerPiece(data, hashlib.sha256(data).digest())

    async def progress(self, peer, blob, index) -> int:
        raise AssertionError("nobody was named as receiving the piece")

    def release(self, blob, indices) -> None:
        raise AssertionError("no origin fetch was handed out")

    def announce(self, blob, index, sha256) -> None:
        self.announced.append(index)

    async def prove_whole(self, blob, source, fill) -> bool:
        return False


async def test_a_reader_told_to_wait_asks_again_and_takes_the_piece_from_the_peer_named(
    tmp_path,
):
    metrics = Metrics()
    config = StorageConfig(dir=str(tmp_path), piece_size=ByteSize(PIECE), scrub_interval=None)
    source = BlobSource(URL(f"{HOME}/v2/app/blobs/{DIGEST}"), DIGEST, None)
    network = WaitingNetwork()
    async with PieceStore(config, metrics) as store:
        origin = HeadOnlyOrigin()
        access = AccessGate(origin, store, enabled=False, ttl=300.0)  # type: ignore[arg-type]
        proofs = ChunkProofs(store, metrics)
        async with Engine(  # type: ignore[arg-type]
            store, origin, metrics, access=access, proofs=proofs, network=network
        ) as engine:
            blob = await engine.blob(source, for_client=False)
            with blob.pinned():
                read = b"".join(
                    [
                        bytes(part) if isinstance(part, memoryview) else await _bytes(part)
                        async for part in engine.segments(blob, source, 0, len(DATA) - 1)
                    ]
                )
    assert read == DATA
    assert network.lookups == {0: 3, 1: 3, 2: 3}
    assert metrics.peer_waits._value.get() == 6
    assert sorted(network.fetched) == sorted(network.announced) == [0, 1, 2]


async def _bytes(segment) -> bytes:
    with open(segment.blob.path, "rb") as file:
        file.seek(segment.offset)
        return file.read(segment.count)
