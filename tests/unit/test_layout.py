from __future__ import annotations

import itertools
import random
import tracemalloc

import pytest

from dfagent.nydus import Chunk, ChunkMap, Compression, DigestAlgorithm, NydusFormatError
from dfagent.storage.layout import (
    CHUNK_RUN_BYTES,
    ChunkLayout,
    FixedLayout,
    PieceSpan,
    piece_size_of,
)


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


def test_a_layout_key_names_its_piece_size_and_a_peers_garbage_names_none():
    chunked = ChunkLayout(1 << 30, 1 << 20, chunk_map((0, 100)))
    assert piece_size_of(FixedLayout(100, 256 * 1024).key) == 256 * 1024
    assert piece_size_of(chunked.key) == 1 << 20
    for garbage in (
        "",
        "fixed",
        "fixed:",
        "fixed:-1",
        "fixed:abc",
        "fixed:3",
        "fixed:0",
        f"fixed:{1 << 40}",
        "slices:1048576",
        "chunks::65536:ab",
    ):
        assert piece_size_of(garbage) is None, garbage


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


def pieces_one_by_one(size: int, piece_size: int, chunks: ChunkMap) -> list[tuple[int, int]]:
    """Piece bounds as the layout promises them, enumerated piece by piece, for chunks too
    large to share a piece."""
    bounds, position = [], 0
    for c in chunks.chunks:
        start = c.compressed_offset
        bounds += [(o, min(o + piece_size, start)) for o in range(position, start, piece_size)]
        bounds.append((start, c.compressed_end))
        position = c.compressed_end
    return bounds + [(o, min(o + piece_size, size)) for o in range(position, size, piece_size)]


def test_bytes_between_chunks_are_cut_as_if_piece_by_piece():
    rng = random.Random(11)
    for _ in range(20):
        offset, spans = rng.choice([0, 1, 64, 4000]), []
        for _ in range(rng.randrange(1, 40)):
            size = rng.choice([CHUNK_RUN_BYTES, 70_000, 100_000])
            spans.append((offset, size))
            offset += size + rng.choice([0, 0, 1, 63, 64, 65, 1000, 7 * 64 + 5])
        layout = ChunkLayout(offset + rng.randrange(200), 64, chunk_map(*spans))
        expected = pieces_one_by_one(layout.size, 64, layout.chunk_map)
        assert [layout.bounds(i) for i in range(layout.count)] == expected
        chunk_bounds = {(c.compressed_offset, c.compressed_end) for c in layout.chunk_map.chunks}
        for index, (start, end) in enumerate(expected):
            assert layout.index_of(start) == layout.index_of(end - 1) == index
            assert bool(layout.chunks(index)) == ((start, end) in chunk_bounds)


def test_far_apart_chunks_cost_no_memory_per_piece_between_them():
    # chunk 64 a GiB into the blob: the 64 chunks before it (an upper layer deleted their
    # file) may fill that GiB, so the map is plausible; a layout must not hold 2**18 pieces
    far = ChunkMap("ab" * 32, (chunk(0, 0, 4096), chunk(64, 1 << 30, 4096)))
    tracemalloc.start()
    try:
        layout = ChunkLayout(1 << 62, 4096, far)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024
    gap_pieces = ((1 << 30) - 4096) // 4096
    assert layout.index_of(1 << 30) == 1 + gap_pieces
    assert layout.bounds(gap_pieces) == ((1 << 30) - 4096, 1 << 30)
    assert layout.chunks(1 + gap_pieces) == (far.chunks[1],) and layout.chunks(5) == ()
