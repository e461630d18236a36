"""Chunk maps (lookups, pieces, packed form) and the proof of one chunk's bytes."""

from __future__ import annotations

import hashlib
import os
import random
import struct

import blake3
import lz4.block
import pytest
import zstandard

from dfagent.nydus import (
    Chunk,
    ChunkMap,
    ChunkMismatch,
    Compression,
    DigestAlgorithm,
    NydusFormatError,
    Piece,
    verify_chunk,
)


def make_chunk(
    index,
    offset,
    size,
    *,
    content=None,
    compression=Compression.NONE,
    algorithm=DigestAlgorithm.SHA256,
    crc=None,
):
    content = content if content is not None else bytes([index % 256]) * size
    digest = (
        hashlib.sha256(content).digest()
        if algorithm is DigestAlgorithm.SHA256
        else blake3.blake3(content).digest()
    )
    return Chunk(
        index, offset, size, index * 4096, len(content), compression, algorithm, digest, crc
    )


def encoded(content, compression, algorithm=DigestAlgorithm.BLAKE3, index=0, offset=0):
    """A chunk record and its stored bytes."""
    match compression:
        case Compression.ZSTD:
            stored = zstandard.ZstdCompressor().compress(content)
        case Compression.LZ4_BLOCK:
            stored = lz4.block.compress(content, store_size=False)
        case Compression.NONE:
            stored = content
    digest = (
        blake3.blake3(content).digest()
        if algorithm is DigestAlgorithm.BLAKE3
        else hashlib.sha256(content).digest()
    )
    chunk = Chunk(index, offset, len(stored), 0, len(content), compression, algorithm, digest)
    return chunk, stored


# A map with a gap between chunks 1 and 2 (as between chunk data and tail metadata).
CHUNKS = (
    make_chunk(0, 0, 100),
    make_chunk(1, 100, 50),
    make_chunk(2, 200, 300),
    make_chunk(3, 500, 10),
)
MAP = ChunkMap("blob", CHUNKS)


@pytest.mark.parametrize(
    ("start", "end", "indexes"),
    [
        (0, 1, [0]),
        (99, 101, [0, 1]),
        (100, 150, [1]),
        (150, 200, []),  # the gap
        (149, 201, [1, 2]),
        (0, 510, [0, 1, 2, 3]),
        (509, 10_000, [3]),
        (510, 600, []),
        (50, 50, []),
    ],
)
def test_covering_returns_exactly_the_chunks_that_hold_the_bytes(start, end, indexes):
    assert [c.index for c in MAP.covering(start, end)] == indexes
    brute = [c.index for c in CHUNKS if c.compressed_offset < end and start < c.compressed_end]
    assert brute == indexes or end <= start


def test_covering_agrees_with_a_scan_on_a_large_map():
    rng = __import__("random").Random(3)
    chunks, offset = [], 0
    for i in range(2000):
        offset += rng.choice([0, 0, 7])
        size = rng.randint(1, 5000)
        chunks.append(make_chunk(i, offset, size, content=b"x" * size))
        offset += size
    chunk_map = ChunkMap("b", tuple(reversed(chunks)))  # order is the map's job
    for _ in range(300):
        a = rng.randint(0, offset)
        b = a + rng.randint(0, 20_000)
        expected = [c.index for c in chunks if c.compressed_offset < b and a < c.compressed_end]
        assert [c.index for c in chunk_map.covering(a, b)] == expected


def test_pieces_are_runs_of_whole_chunks_within_the_budget():
    assert MAP.pieces(200) == (Piece(0, 150, 0, 2), Piece(200, 500, 2, 1), Piece(500, 510, 3, 1))
    assert MAP.pieces(10_000) == (Piece(0, 510, 0, 4),)
    assert MAP.pieces(150) == (Piece(0, 150, 0, 2), Piece(200, 500, 2, 1), Piece(500, 510, 3, 1))
    assert MAP.pieces(1) == tuple(
        Piece(c.compressed_offset, c.compressed_end, c.index, 1) for c in CHUNKS
    )
    for budget in (1, 100, 149, 150, 151, 300, 510, 511):
        pieces = MAP.pieces(budget)
        assert sum(p.count for p in pieces) == len(CHUNKS)
        for piece in pieces:
            assert piece.count == 1 or piece.end - piece.start <= budget
    with pytest.raises(ValueError):
        MAP.pieces(0)
    assert ChunkMap("empty", ()).pieces(100) == ()


def test_overlapping_chunks_are_refused():
    with pytest.raises(NydusFormatError, match="overlap"):
        ChunkMap("b", (make_chunk(0, 0, 100), make_chunk(1, 99, 10)))


MIB16 = 16 * 1024 * 1024  # the largest chunk


@pytest.mark.parametrize(
    "chunks",
    [
        [(0, 1 << 45)],  # the first chunk far from the blob's start
        [(0, MIB16 + 1)],
        [(0, 0), (1, 4096 + 2 * MIB16)],  # far from the chunk before it
        [(0, 0), (3, 4096 + 4 * MIB16)],  # farther than the two skipped chunks explain
        [(0, 0), ((1 << 24) - 1, (1 << 44) - 100)],  # explained, but past any blob
    ],
)
def test_chunks_far_apart_are_refused(chunks):
    with pytest.raises(NydusFormatError, match=r"no chunk|plausible"):
        ChunkMap("b", tuple(make_chunk(index, offset, 4096) for index, offset in chunks))


def test_chunks_a_map_skips_may_fill_the_bytes_between_its_own():
    # an upper layer deleted the files of chunks 1..3: the map goes on after their bytes
    ChunkMap("b", (make_chunk(0, 0, 4096), make_chunk(4, 4096 + 3 * MIB16, 4096)))
    ChunkMap("b", (make_chunk(0, MIB16, 4096),))  # some bytes to spare


def test_maps_that_list_different_chunks_of_a_blob_agree_where_they_overlap():
    whole = ChunkMap("b", tuple(make_chunk(i, i * 100, 100) for i in range(4)))
    upper = ChunkMap("b", (make_chunk(0, 0, 100), make_chunk(2, 200, 100)))  # files deleted
    assert whole.agrees_with(upper) and upper.agrees_with(whole)
    assert whole.agrees_with(whole) and ChunkMap("b", ()).agrees_with(whole)
    assert not whole.agrees_with(ChunkMap("c", whole.chunks))  # another blob's


@pytest.mark.parametrize(
    "replacement",
    [
        make_chunk(2, 200, 100, content=b"y" * 100),  # another digest
        make_chunk(2, 200, 90),  # another size
        make_chunk(2, 210, 90),  # straddling two chunks of the other map
        make_chunk(2, 200, 100, algorithm=DigestAlgorithm.BLAKE3),
    ],
)
def test_maps_that_contradict_each_other_on_a_chunk_do_not_agree(replacement):
    whole = ChunkMap("b", tuple(make_chunk(i, i * 100, 100) for i in range(4)))
    liar = ChunkMap("b", (make_chunk(0, 0, 100), replacement))
    assert not whole.agrees_with(liar) and not liar.agrees_with(whole)


@pytest.mark.parametrize(
    "changes",
    [
        {"compressed_size": 0},
        {"uncompressed_size": 17 * 1024 * 1024},
        {"digest": b"short"},
        {"compressed_offset": -1},
        {"crc32c": 1 << 32},
    ],
)
def test_impossible_chunk_records_are_refused(changes):
    fields = {
        "index": 0,
        "compressed_offset": 0,
        "compressed_size": 10,
        "uncompressed_offset": 0,
        "uncompressed_size": 10,
        "compression": Compression.NONE,
        "digest_algorithm": DigestAlgorithm.SHA256,
        "digest": bytes(32),
    }
    Chunk(**fields)
    with pytest.raises(NydusFormatError):
        Chunk(**{**fields, **changes})


def test_a_raw_chunk_must_have_equal_sizes():
    with pytest.raises(NydusFormatError, match="stored raw"):
        Chunk(0, 0, 10, 0, 11, Compression.NONE, DigestAlgorithm.BLAKE3, bytes(32))


def test_packed_form_round_trips():
    chunks = (
        make_chunk(5, 0, 100, crc=0xDEADBEEF),
        Chunk(7, 100, 40, 8192, 4096, Compression.ZSTD, DigestAlgorithm.BLAKE3, os.urandom(32)),
        Chunk(
            9,
            140,
            40,
            12288,
            4096,
            Compression.LZ4_BLOCK,
            DigestAlgorithm.SHA256,
            os.urandom(32),
            0,
        ),
    )
    chunk_map = ChunkMap("sha256:" + "ab" * 32, chunks)
    packed = chunk_map.to_bytes()
    assert packed[3] == 1  # the version byte
    assert ChunkMap.from_bytes(packed) == chunk_map
    assert ChunkMap.from_bytes(ChunkMap("x", ()).to_bytes()) == ChunkMap("x", ())
    assert len(packed) < 80 * len(chunks) + 100


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],
        lambda b: b + b"\0",
        lambda b: b"XYZ" + b[3:],
        lambda b: b[:3] + b"\x02" + b[4:],
        lambda b: b[:4] + b"\xff\xff" + b[6:],  # blob id length past the end
        lambda b: b[:6] + b"\xff\xff\xff\xff" + b[10:],  # a count that overflows the data
        lambda b: b[:2],
    ],
)
def test_packed_form_refuses_damaged_input(mangle):
    packed = ChunkMap("blob", CHUNKS).to_bytes()
    with pytest.raises(NydusFormatError):
        ChunkMap.from_bytes(mangle(packed))


def test_packed_form_refuses_chunks_far_apart():
    packed = bytearray(ChunkMap("b", (make_chunk(0, 0, 10), make_chunk(1, 10, 10))).to_bytes())
    offset_at = 10 + 1 + 65 + 4  # header, blob id, the first record; the second's offset
    assert struct.unpack_from("<Q", packed, offset_at) == (10,)
    struct.pack_into("<Q", packed, offset_at, 1 << 40)
    with pytest.raises(NydusFormatError, match="lie in no chunk"):
        ChunkMap.from_bytes(bytes(packed))


def test_packed_form_refuses_unknown_flags():
    packed = bytearray(ChunkMap("b", (make_chunk(0, 0, 10),)).to_bytes())
    flags_at = 10 + 1 + 4 + 8 + 4 + 8 + 4
    packed[flags_at] |= 0x80
    with pytest.raises(NydusFormatError, match="flags"):
        ChunkMap.from_bytes(bytes(packed))


@pytest.mark.parametrize("compression", list(Compression))
@pytest.mark.parametrize("algorithm", list(DigestAlgorithm))
def test_verify_accepts_the_chunk_and_rejects_any_flipped_byte(compression, algorithm):
    content = (
        (b"nydus chunk " * 400)[:4096]
        if compression is not Compression.NONE
        else (os.urandom(4096))
    )
    chunk, stored = encoded(content, compression, algorithm)
    assert verify_chunk(chunk, stored) == content
    for position in (0, len(stored) // 2, len(stored) - 1):
        flipped = bytearray(stored)
        flipped[position] ^= 0x01
        with pytest.raises(ChunkMismatch):
            verify_chunk(chunk, bytes(flipped))


def test_verify_rejects_wrong_length_and_wrong_digest():
    chunk, stored = encoded(b"abc" * 1000, Compression.ZSTD)
    with pytest.raises(ChunkMismatch, match="bytes given"):
        verify_chunk(chunk, stored + b"\0")
    other, _ = encoded(b"abd" * 1000, Compression.ZSTD)
    forged = Chunk(
        0, 0, len(stored), 0, 3000, Compression.ZSTD, DigestAlgorithm.BLAKE3, other.digest
    )
    with pytest.raises(ChunkMismatch, match="digest differs"):
        verify_chunk(forged, stored)


def test_verify_never_inflates_beyond_the_chunk_record():
    bomb = zstandard.ZstdCompressor().compress(bytes(64 * 1024 * 1024))  # declares 64 MiB
    chunk = Chunk(0, 0, len(bomb), 0, 4096, Compression.ZSTD, DigestAlgorithm.BLAKE3, bytes(32))
    with pytest.raises(ChunkMismatch, match="declares"):
        verify_chunk(chunk, bomb)
    undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(
        bytes(64 * 1024 * 1024)
    )
    chunk = Chunk(
        0, 0, len(undeclared), 0, 4096, Compression.ZSTD, DigestAlgorithm.BLAKE3, bytes(32)
    )
    with pytest.raises(ChunkMismatch, match="does not decode"):
        verify_chunk(chunk, undeclared)
    lz4_bomb = lz4.block.compress(bytes(1024 * 1024), store_size=False)
    chunk = Chunk(
        0, 0, len(lz4_bomb), 0, 4096, Compression.LZ4_BLOCK, DigestAlgorithm.BLAKE3, bytes(32)
    )
    with pytest.raises(ChunkMismatch, match="does not decode"):
        verify_chunk(chunk, lz4_bomb)


def test_verify_rejects_content_shorter_than_recorded():
    content = b"q" * 1000
    stored = lz4.block.compress(content, store_size=False)
    chunk = Chunk(
        0,
        0,
        len(stored),
        0,
        1001,
        Compression.LZ4_BLOCK,
        DigestAlgorithm.SHA256,
        hashlib.sha256(content).digest(),
    )
    with pytest.raises(ChunkMismatch):
        verify_chunk(chunk, stored)


def _padded_frames(content: bytes) -> tuple[bytes, list[bytes]]:
    """A chunk's real zstd frame, and inputs of the same length made of a shorter frame of the
    same content followed by padding: random bytes, a second frame, a skippable frame."""
    real = zstandard.ZstdCompressor(level=1).compress(content)
    short = zstandard.ZstdCompressor(level=19).compress(content)
    pad = len(real) - len(short)
    assert pad > 64, "the content recompresses much shorter"
    second = zstandard.ZstdCompressor().compress(b"other content")
    skippable = struct.pack("<II", 0x184D2A50, pad - 8) + bytes(pad - 8)
    return real, [
        short + os.urandom(pad),
        short + second + bytes(pad - len(second)),
        short + skippable,
    ]


def test_verify_rejects_a_frame_followed_by_anything():
    words = [bytes(random.Random(i).choices(b"abcdefghij", k=5)) for i in range(300)]
    content = b" ".join(random.Random(1).choices(words, k=12000))[:65536]
    real, forgeries = _padded_frames(content)
    chunk = Chunk(
        0, 0, len(real), 0, len(content), Compression.ZSTD, DigestAlgorithm.BLAKE3,
        blake3.blake3(content).digest(),
    )  # fmt: skip
    assert verify_chunk(chunk, real) == content
    for forged in forgeries:
        assert len(forged) == len(real) and forged != real
        with pytest.raises(ChunkMismatch, match="does not decode"):
            verify_chunk(chunk, forged)


def test_verify_rejects_an_lz4_block_followed_by_anything():
    content = b"nydus chunk " * 1000
    block = lz4.block.compress(content, store_size=False)
    for tail in (b"\0", b"\x10a", bytes(5), os.urandom(64)):
        chunk = Chunk(
            0, 0, len(block) + len(tail), 0, len(content), Compression.LZ4_BLOCK,
            DigestAlgorithm.SHA256, hashlib.sha256(content).digest(),
        )  # fmt: skip
        with pytest.raises(ChunkMismatch, match="does not decode"):
            verify_chunk(chunk, block + tail)
