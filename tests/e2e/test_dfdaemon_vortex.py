"""Our task ids, piece layout and Vortex client against a real dfdaemon: dfget downloads a
blob from the real registry through a dfdaemon, then we fetch the task's pieces from that
dfdaemon's Vortex TCP port and compare them with the blob."""

from __future__ import annotations

import asyncio
import os
import zlib
from pathlib import Path

import pytest

from dfagent.dragonfly import piece_bounds, piece_count, piece_length, task_id_for_url
from dfagent.dragonfly.vortex import (
    DownloadPiece,
    PieceMetadata,
    Tag,
    fetch_piece,
)
from dfagent.dragonfly.vortex.wire import read_header
from dfagent.errors import VortexError
from tests.support import dragonfly

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(dragonfly.available() is not None, reason=str(dragonfly.available())),
]

MiB = 1 << 20


async def two_requests_on_one_connection(port: int, task: str) -> list[int]:
    """Ask for pieces 1 and 0 on one connection; the piece numbers that came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(DownloadPiece(task, 1).encode() + DownloadPiece(task, 0).encode())
    answered = []
    for _ in range(2):
        header = await read_header(reader)
        assert header.tag == Tag.PIECE_CONTENT, header.describe()
        metadata = PieceMetadata.decode(await reader.readexactly(header.length))
        await reader.readexactly(metadata.length)
        answered.append(metadata.number)
    writer.close()
    return answered


def test_pieces_fetched_from_a_real_dfdaemon(registry, tmp_path: Path) -> None:
    data = os.urandom(5 * MiB + 123)
    digest = registry.push_blob("vortex/interop", data)
    url = f"{registry.url}/v2/vortex/interop/blobs/{digest}?ns=example.org"
    task = task_id_for_url(url)
    length = piece_length(len(data))
    count = piece_count(len(data), length)
    assert count == 2

    with dragonfly.cluster(tmp_path / "dragonfly", daemons=1) as cluster:
        (daemon,) = cluster.daemons
        daemon.dfget(url, tmp_path / "downloaded")
        assert (tmp_path / "downloaded").read_bytes() == data
        assert (daemon.root / "storage" / "content" / "tasks" / task[:3] / task).is_file()

        for number in range(count):
            metadata, piece = asyncio.run(
                fetch_piece("127.0.0.1", daemon.tcp_port, task, number, read_timeout=10)
            )
            offset, size = piece_bounds(len(data), length, number)
            assert (metadata.number, metadata.offset, metadata.length) == (number, offset, size)
            assert metadata.digest == f"crc32:{zlib.crc32(piece)}"
            assert piece == data[offset : offset + size]

        with pytest.raises(VortexError) as missing:
            asyncio.run(fetch_piece("127.0.0.1", daemon.tcp_port, task, count, read_timeout=10))
        assert missing.value.not_found

        assert asyncio.run(two_requests_on_one_connection(daemon.tcp_port, task)) == [1, 0]
