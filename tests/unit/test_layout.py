from __future__ import annotations

import itertools
import random

import pytest

from dfagent.nydus import Chunk, ChunkMap, Compression, DigestAlgorithm, NydusFormatError
from dfagent.storage.layout import CHUNK_RUN_BYTES, ChunkLayout, FixedLayout, PieceSpan


def chunk(index: int, offset: int, size: int) -> Chunk:
    return Chunk(
        index=index,
        compressed_offset=offset,
        compressed_size=size,
        uncompressed_offset=index * 4096,
        uncompressed_size=size,
        compression=Compression.NONE,
        digest_algorithm=DigestAlgorithm.SHA256,
        digest=bytes(32),
    )


def chunk_map(*spans: tuple[int, int]) -> ChunkMap:
    return ChunkMap("ab" * 32, tuple(chunk(i, o, s) for i, (o, s) in enumerate(spans)))


def test_fixed_spans_cross_boundaries():
    layout = FixedLayout(13, 5)
    assert layout.spans(3, 12) == [PieceSpan(0, 3, 5), PieceSpan(1, 5, 10), PieceSpan(2, 10, 13)]
    assert layout.spans(5, 9) == [PieceSpan(1, 5, 10)]
    assert (layout.count, layout.bounds(2), layout.chunks(0)) == (3, (10, 13), ())


def test_small_touching_chunks_share_a_piece_and_a_large_one_stands_alone():
    big = CHUNK_RUN_BYTES + 1
    layout = ChunkLayout(10_000_000, 1 << 20, chunk_map((0, 100), (100, 200), (300, big)))
    tail = 300 + big  # where the chunks end: fixed pieces from here on
    assert [layout.bounds(i) for i in range(3)] == [(0, 300), (300, tail), (tail, tail + (1 << 20))]
    assert layout.bounds(layout.count - 1)[1] == 10_000_000
    assert [c.index for c in layout.chunks(0)] == [0, 1]
    assert [c.index for c in layout.chunks(1)] == [2]
    assert layout.chunks(2) == ()


def test_bytes_between_chunks_are_pieces_of_their_own():
    layout = ChunkLayout(1000, 64, chunk_map((10, 20), (100, 20)))
    bounds = [layout.bounds(i) for i in range(layout.count)]
    assert bounds[:4] == [(0, 10), (10, 30), (30, 94), (94, 100)]
    assert bounds[4] == (100, 120)
    assert [bool(layout.chunks(i)) for i in range(5)] == [False, True, False, False, True]
    assert layout.tail == 120 and bounds[-1][1] == 1000


def test_spans_and_index_of_agree_with_bounds():
    rng = random.Random(7)
    offset, spans = 0, []
    for _ in range(300):
        offset += rng.choice([0, 0, 0, 4096 - offset % 4096])
        size = rng.choice([50, 700, 5000, 70_000, 300_000])
        spans.append((offset, size))
        offset += size
    layout = ChunkLayout(offset + 123_456, 1 << 16, chunk_map(*spans))
    assert layout.bounds(0)[0] == 0 and layout.bounds(layout.count - 1)[1] == layout.size
    for index in range(layout.count - 1):
        assert layout.bounds(index)[1] == layout.bounds(index + 1)[0]
        start, end = layout.bounds(index)
        assert layout.index_of(start) == layout.index_of(end - 1) == index
        inside = layout.chunks(index)
        assert sum(c.compressed_size for c in inside) in (0, end - start)
    for _ in range(200):
        first = rng.randrange(layout.size)
        last = rng.randrange(first, min(layout.size, first + 3_000_000))
        got = layout.spans(first, last)
        assert got[0].start == first and got[-1].end == last + 1
        assert all(a.end == b.start and a.index + 1 == b.index for a, b in itertools.pairwise(got))


def test_key_names_the_map_and_a_map_larger_than_the_blob_is_refused():
    one = ChunkLayout(1000, 64, chunk_map((0, 100)))
    assert one.key == ChunkLayout(5000, 64, chunk_map((0, 100))).key
    assert one.key != ChunkLayout(1000, 64, chunk_map((0, 101))).key
    assert one.key != FixedLayout(1000, 64).key
    with pytest.raises(NydusFormatError):
        ChunkLayout(50, 64, chunk_map((0, 100)))


def sized_map(*chunks: tuple[int, int, int]) -> ChunkMap:
    """Chunks (compressed offset, compressed size, uncompressed size), in blob order."""
    made = []
    for i, (offset, size, uncompressed) in enumerate(chunks):
        made.append(
            Chunk(i, offset, size, i * 1024 * 1024, uncompressed, Compression.ZSTD,
                  DigestAlgorithm.BLAKE3, bytes(32))
        )  # fmt: skip
    return ChunkMap("cd" * 32, tuple(made))


def test_read_ahead_stops_where_the_file_being_read_ends():
    full = 1024 * 1024
    # a file of three chunks (the last one short), then a file of one full chunk, then one short
    layout = ChunkLayout(
        10_000,
        64,
        sized_map((0, 1000, full), (1000, 1000, full), (2000, 300, 10), (2300, 900, full),
                  (3200, 50, 7)),
    )  # fmt: skip
    assert layout.read_ahead_end(1000) == 2300  # mid-file: the rest of it
    assert layout.read_ahead_end(2300) == 2300  # a file just ended: nothing
    assert layout.read_ahead_end(2400) == 3250  # a full last chunk hides the end: the next one
    assert layout.read_ahead_end(3300) == 10_000  # the metadata tail
    assert FixedLayout(10_000, 64).read_ahead_end(5) == 10_000
    # a reader that went on from one file into the next walks the image
    assert not layout.file_ends_within(0, 2299)  # the first file, to its last byte
    assert layout.file_ends_within(0, 2300)  # and the next file's first byte
    assert layout.file_ends_within(1000, 3300)
    assert not layout.file_ends_within(2300, 3249)  # one file, whose end a full chunk hides
    assert not FixedLayout(10_000, 64).file_ends_within(0, 9_999)
