"""The nydus parsers on exact bytes laid out from the published format, then on damaged and
hostile variants: every damage is a NydusFormatError naming what is wrong, never a crash or
an unbounded allocation."""

from __future__ import annotations

import hashlib
import os
import random
import struct

import pytest
import zstandard

from dfagent.nydus import (
    BlobTailReader,
    ByteRange,
    Compression,
    DigestAlgorithm,
    NydusFormatError,
    inline_bootstrap_range,
    parse_bootstrap,
    parse_chunk_infos,
    parse_ci_header,
    parse_toc,
    verify_chunk,
)
from tests.support import nydus_layout as layout

CONTENTS = [
    b"compressible text " * 4000,
    os.urandom(70_000),  # stored raw: does not shrink
    b"x" * 1_048_576,
    b"tail",
]


def read_tail(blob: bytes, reader: BlobTailReader) -> list[tuple[ByteRange, ...]]:
    rounds = []
    while ranges := reader.wanted():
        rounds.append(ranges)
        reader.feed({r: blob[r.start : r.end] for r in ranges})
    return rounds


def check_map(chunk_map, blob, compression, algorithm):
    assert len(chunk_map.chunks) == len(blob.chunks)
    for chunk, expected in zip(chunk_map.chunks, blob.chunks, strict=True):
        assert chunk.compressed_offset == expected.compressed_offset
        assert chunk.compressed_size == expected.compressed_size
        assert chunk.uncompressed_size == len(expected.content)
        assert chunk.compression is (compression if expected.compressed else Compression.NONE)
        assert chunk.digest_algorithm is algorithm
        stored = blob.data[chunk.compressed_offset : chunk.compressed_end]
        assert verify_chunk(chunk, stored) == expected.content


@pytest.mark.parametrize("v2", [False, True])
@pytest.mark.parametrize("ci_compression", ["none", "zstd", "lz4_block"])
def test_chunk_info_array_decodes_to_the_written_layout(v2, ci_compression):
    contents = [bytes([i % 7]) * (5000 + i) for i in range(300)]
    blob = layout.build_blob(contents, v2=v2, ci_compression=ci_compression)
    header = parse_ci_header(blob.data[-4096:])
    assert header.entries == len(contents)
    assert header.compression is Compression(ci_compression)
    assert (header.offset, header.compressed_size) == (blob.ci_offset, blob.ci_compressed_size)
    infos = parse_chunk_infos(
        header, blob.data[blob.ci_offset : blob.ci_offset + blob.ci_compressed_size]
    )
    for info, chunk in zip(infos, blob.chunks, strict=True):
        assert info.compressed_offset == chunk.compressed_offset
        assert info.compressed_size == chunk.compressed_size
        assert info.uncompressed_offset == chunk.uncompressed_offset
        assert info.uncompressed_size == len(chunk.content)
        assert info.compressed == chunk.compressed


def test_chunk_info_sizes_use_all_24_bits():
    entries = layout.ci_v1(0xAB_CDEF_1234, 0xABCDEF, 0x123_4567_8000, 0xFEDCBA) + layout.ci_v1(
        0, 16 << 20, 0, 16 << 20
    )
    header = parse_ci_header(layout.ci_header(1, 0, 2, 0xFF_FFFF_FFFF, 32, 32))
    first, second = parse_chunk_infos(header, entries)
    assert (first.compressed_offset, first.compressed_size) == (0xAB_CDEF_1234, 0xABCDEF)
    assert (first.uncompressed_offset, first.uncompressed_size) == (0x123_4567_8000, 0xFEDCBA)
    assert second.compressed_size == second.uncompressed_size == 16 << 20
    v2 = layout.ci_v2(0x12_3456_789A, 0xFFFFFF, 0xFFFF_FFFF << 12, 1 << 24, True, crc=0xCAFE)
    header = parse_ci_header(layout.ci_header(5, 0, 1, 1 << 40, 24, 24))
    (only,) = parse_chunk_infos(header, v2)
    assert (only.compressed_offset, only.compressed_size) == (0x12_3456_789A, 0xFFFFFF)
    assert only.uncompressed_offset == 0xFFFF_FFFF << 12 and only.uncompressed_size == 1 << 24
    assert only.compressed and only.crc32c == 0xCAFE


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (layout.ci_header(1, 0, 1, 4096, 16, 16)[:-1], "4095 bytes"),
        (layout.ci_header(1, 0, 1, 4096, 16, 16, magic=0x12345678), "magic"),
        (layout.ci_header(1, 9, 1, 4096, 16, 16), "compressor"),
        (layout.ci_header(1, 2, 1, 4096, 16, 16), "compressor"),  # gzip
        (layout.ci_header(1, 0, 0, 4096, 16, 16), "entries"),
        (layout.ci_header(1, 0, 0xFFFF_FFFF, 4096, 16, (0xFFFF_FFFF * 16)), "entries"),
        (layout.ci_header(1, 0, 2, 4096, 16, 16), "array of 16 bytes for 2"),
        (layout.ci_header(5, 0, 1, 4096, 16, 16), "array of 16 bytes for 1 entries of 24"),
        (layout.ci_header(1, 3, 1, 4096, 1 << 40, 16), "implausible"),
        (layout.ci_header(1, 0, 1, 4096, 0, 16), "inconsistent"),
        (layout.ci_header(9, 0, 1, 4096, 16, 16), "ZRan"),
        (layout.ci_header(1, 0, 8, 7, 128, 128), "8 chunks cannot fit the 7 bytes"),
    ],
)
def test_bad_ci_headers_are_named(header, message):
    with pytest.raises(NydusFormatError, match=message):
        parse_ci_header(header)


def test_a_hostile_chunk_info_array_cannot_inflate_past_its_header():
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(1 << 20))
    header = parse_ci_header(layout.ci_header(1, 3, 4, 1 << 30, len(bomb), 64))
    with pytest.raises(NydusFormatError, match="chunk-info array"):
        parse_chunk_infos(header, bomb)
    declared = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    header = parse_ci_header(layout.ci_header(1, 3, 4, 1 << 30, len(declared), 64))
    with pytest.raises(NydusFormatError, match="declares"):
        parse_chunk_infos(header, declared)


def test_chunk_infos_must_lie_before_the_array():
    entry = layout.ci_v1(1000, 100, 0, 100)
    header = parse_ci_header(layout.ci_header(1, 0, 1, 1050, 16, 16))
    with pytest.raises(NydusFormatError, match="runs past the chunk data"):
        parse_chunk_infos(header, entry)
    with pytest.raises(NydusFormatError, match="15 bytes"):
        parse_chunk_infos(header, entry[:-1])


@pytest.mark.parametrize("compression", ["zstd", "lz4_block", "none"])
@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_blob_with_toc_proves_its_chunks_from_its_own_tail(compression, algorithm):
    blob = layout.build_blob(CONTENTS, compression, algorithm, v2=True, toc=True)
    reader = BlobTailReader(len(blob.data))
    rounds = read_tail(blob.data, reader)
    assert len(rounds) == 2
    assert rounds[0] == (ByteRange(len(blob.data) - 4096, len(blob.data)),)
    tail = reader.result()
    assert tail.digests == tuple(blob.digests)
    chunk_map = tail.chunk_map("blob", Compression(compression), DigestAlgorithm(algorithm))
    check_map(chunk_map, blob, Compression(compression), DigestAlgorithm(algorithm))
    fetched = sum(r.size for ranges in rounds for r in ranges)
    assert fetched < 4096 + 4096 + blob.ci_compressed_size + 32 * len(CONTENTS) + 1


def test_blob_with_toc_and_its_bootstrap_entry_checks_the_toc_digest():
    blob = layout.build_blob(CONTENTS, toc=True)
    boot = parse_bootstrap(layout.v6_bootstrap("b" * 64, blob))
    (entry,) = boot.blobs
    reader = BlobTailReader(len(blob.data), entry)
    assert reader.wanted() == (ByteRange(len(blob.data) - len(blob.toc), len(blob.data)),)
    read_tail(blob.data, reader)
    from_tail = reader.result().chunk_map(entry.blob_id, entry.compression, entry.digest_algorithm)
    assert from_tail == boot.chunk_maps[entry.blob_id]
    forged = bytearray(blob.data)
    forged[-len(blob.toc) + 40] ^= 1  # inside the first TOC entry's digest
    with pytest.raises(NydusFormatError, match="sha256 differs from the digest the bootstrap"):
        read_tail(bytes(forged), BlobTailReader(len(blob.data), entry))


def test_blob_without_toc_reads_the_chunk_infos_in_one_round_with_its_entry():
    blob = layout.build_blob(CONTENTS)
    boot = parse_bootstrap(layout.v6_bootstrap("c" * 64, blob))
    (entry,) = boot.blobs
    reader = BlobTailReader(len(blob.data), entry)
    assert reader.wanted() == (ByteRange(blob.ci_offset, len(blob.data)),)
    assert len(read_tail(blob.data, reader)) == 1
    tail = reader.result()
    assert tail.digests is None
    with pytest.raises(NydusFormatError, match="no chunk digests"):
        tail.chunk_map(entry.blob_id, entry.compression, entry.digest_algorithm)
    digests = tuple(
        c.digest for c in sorted(boot.chunk_maps[entry.blob_id].chunks, key=lambda c: c.index)
    )
    chunk_map = tail.chunk_map(entry.blob_id, entry.compression, entry.digest_algorithm, digests)
    assert chunk_map == boot.chunk_maps[entry.blob_id]


def test_blob_without_toc_and_without_entry_finds_its_header_at_the_end():
    blob = layout.build_blob(CONTENTS)
    reader = BlobTailReader(len(blob.data))
    rounds = read_tail(blob.data, reader)
    assert rounds[1] == (ByteRange(blob.ci_offset, blob.ci_offset + blob.ci_compressed_size),)
    assert len(reader.result().chunks) == len(CONTENTS)


@pytest.mark.parametrize("target", ["digest", "meta", "header"])
def test_toc_entries_guard_what_they_name(target):
    blob = layout.build_blob(CONTENTS, toc=True)
    data = bytearray(blob.data)
    if target == "digest":
        position = len(data) - len(blob.toc) - 512 - 1  # last byte of blob.digest
    elif target == "meta":
        data[blob.ci_offset : blob.ci_offset + blob.ci_compressed_size] = layout.compress(
            b"\0" * blob.ci_uncompressed_size, "zstd"
        ).ljust(blob.ci_compressed_size, b"\0")[: blob.ci_compressed_size]
        position = None
    else:
        position = blob.ci_offset + blob.ci_compressed_size + 100  # reserved header bytes
    if position is not None:
        data[position] ^= 1
    with pytest.raises(NydusFormatError):
        read_tail(bytes(data), BlobTailReader(len(data)))


def test_toc_parser_refuses_hostile_tocs():
    entry = layout.toc_entry("blob.meta", "none", bytes(32), 0, 10, 10)
    good = entry + layout.tar_header("rafs.blob.toc", len(entry))
    (parsed,), size = parse_toc(good)
    assert parsed.name == "blob.meta" and size == len(good)
    with pytest.raises(NydusFormatError, match=r"not rafs\.blob\.toc"):
        parse_toc(entry + layout.tar_header("other", len(entry)))
    with pytest.raises(NydusFormatError, match="do not fit"):
        parse_toc(entry + layout.tar_header("rafs.blob.toc", 1 << 30))
    with pytest.raises(NydusFormatError, match="do not fit"):
        parse_toc(entry + layout.tar_header("rafs.blob.toc", 100))
    with pytest.raises(NydusFormatError, match="checksum"):
        parse_toc(good[:-1] + b"\1")
    with pytest.raises(NydusFormatError, match="shorter"):
        parse_toc(good[-100:])
    with pytest.raises(NydusFormatError, match="bootstrap records"):
        parse_toc(good, bytes(32))
    assert parse_toc(good, hashlib.sha256(good).digest())[1] == len(good)
    unknown = struct.pack("<I", 0x80) + entry[4:]
    with pytest.raises(NydusFormatError, match="unknown compression"):
        parse_toc(unknown + layout.tar_header("rafs.blob.toc", len(unknown)))


def test_toc_pointing_outside_the_blob_is_refused():
    entries = b"".join(
        layout.toc_entry(name, "none", bytes(32), offset, 4096, 4096)
        for name, offset in (("blob.meta", 1 << 40), ("blob.meta.header", 0))
    )
    blob = bytes(8192) + entries + layout.tar_header("rafs.blob.toc", len(entries))
    with pytest.raises(NydusFormatError, match="outside the blob"):
        read_tail(blob, BlobTailReader(len(blob)))


def test_tail_reader_refuses_short_reads_and_tiny_blobs():
    blob = layout.build_blob(CONTENTS)
    reader = BlobTailReader(len(blob.data))
    (wanted,) = reader.wanted()
    with pytest.raises(NydusFormatError, match="missing or short"):
        reader.feed({wanted: blob.data[wanted.start : wanted.end - 1]})
    with pytest.raises(NydusFormatError):
        read_tail(b"\0" * 100, BlobTailReader(100))
    with pytest.raises(NydusFormatError):
        BlobTailReader(0)


@pytest.mark.parametrize("compression", ["zstd", "lz4_block", "none"])
@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_v6_bootstrap_gives_the_chunk_map(compression, algorithm):
    blob = layout.build_blob(CONTENTS, compression, algorithm)
    boot = parse_bootstrap(layout.v6_bootstrap("d" * 64, blob, compression, algorithm))
    assert boot.version == 6 and boot.chunk_size == 0x100000
    (entry,) = boot.blobs
    assert entry.blob_id == "d" * 64 and entry.chunk_count == len(CONTENTS)
    assert entry.compression is Compression(compression)
    assert entry.digest_algorithm is DigestAlgorithm(algorithm)
    check_map(boot.chunk_maps["d" * 64], blob, Compression(compression), DigestAlgorithm(algorithm))


def test_v6_bootstrap_tolerates_shared_chunks_but_not_conflicting_ones():
    blob = layout.build_blob(CONTENTS)
    records = [layout.chunk_record(c, d, 0) for c, d in zip(blob.chunks, blob.digests, strict=True)]
    shared = layout.v6_bootstrap("e" * 64, blob, chunk_records=[*records, records[0]])
    assert len(parse_bootstrap(shared).chunk_maps["e" * 64].chunks) == len(CONTENTS)
    other = layout.chunk_record(blob.chunks[0], bytes(32), 0)
    conflicting = layout.v6_bootstrap("e" * 64, blob, chunk_records=[*records, other])
    with pytest.raises(NydusFormatError, match="recorded twice"):
        parse_bootstrap(conflicting)
    foreign = layout.chunk_record(blob.chunks[0], blob.digests[0], 3)
    with pytest.raises(NydusFormatError, match="names blob 3"):
        parse_bootstrap(layout.v6_bootstrap("e" * 64, blob, chunk_records=[foreign]))


def _patched(image: bytes, offset: int, fmt: str, *values) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


BLOB = layout.build_blob(CONTENTS)
IMAGE = layout.v6_bootstrap("f" * 64, BLOB)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (b"", "neither"),
        (IMAGE[:1000], "neither"),
        (IMAGE[:1180], "extended super block"),
        (_patched(IMAGE, 1024, "<I", 0), "neither"),
        (_patched(IMAGE, 1152, "<Q", 0x80 | 0x1 | 0x4), "no single compressor"),
        (_patched(IMAGE, 1152, "<Q", 0x80), "no single compressor"),
        (_patched(IMAGE, 1152, "<Q", 0x40 | 0x4), "gzip"),
        (_patched(IMAGE, 1172, "<I", 3000), "chunk size"),
        (_patched(IMAGE, 1160, "<Q", 100), "not aligned"),
        (_patched(IMAGE, 1168, "<I", 255), "multiple of 256"),
        (_patched(IMAGE, 1168, "<I", 256 * 1_000_000), "v6 blob table"),
        (_patched(IMAGE, 1184, "<Q", 1 << 62), "v6 chunk table"),
        (_patched(IMAGE, 1184, "<Q", 81), "multiple of 80"),
        (IMAGE[:-1], "v6 chunk table"),
        (_patched(IMAGE, 4096, "<64s", b"\xff" * 64), "not ASCII"),
        (_patched(IMAGE, 4096, "<64s", bytes(64)), "empty"),
        (_patched(IMAGE, 4096 + 64, "<I", 1), "records index 1"),
        (_patched(IMAGE, 4096 + 72, "<I", 1 << 25), "more than RAFS allows"),
        (_patched(IMAGE, 4096 + 76, "<I", 2), "gzip"),
        (_patched(IMAGE, 4096 + 80, "<I", 7), "digest algorithm"),
        (_patched(IMAGE, 4096 + 120, "<Q", 1 << 63), "chunk-info location"),
        (_patched(IMAGE, 4096 + 88, "<Q", 10), "past the end"),
        (_patched(IMAGE, 8192 + 40, "<I", 0), "compressed size 0"),
        (_patched(IMAGE, 8192 + 44, "<I", 1 << 30), "uncompressed size"),
        (_patched(IMAGE, 8192 + 72, "<I", 99), "beyond"),
    ],
)
def test_bad_bootstraps_are_named(image, message):
    with pytest.raises(NydusFormatError, match=message):
        parse_bootstrap(image)


@pytest.mark.parametrize(
    ("offset", "message"), [(1 << 36, "lie in no chunk"), (1 << 45, "past any plausible")]
)
def test_a_chunk_far_past_the_others_is_refused_when_the_blob_size_is_not_recorded(offset, message):
    unsized = _patched(IMAGE, 4096 + 88, "<Q", 0)  # the blob table entry's compressed size
    last = BLOB.chunks[-1]
    assert parse_bootstrap(unsized).chunk_maps["f" * 64].data_end == (
        last.compressed_offset + last.compressed_size
    )
    far = _patched(unsized, 8192 + 3 * 80 + 48, "<Q", offset)  # the last chunk's offset
    with pytest.raises(NydusFormatError, match=message):
        parse_bootstrap(far)


def test_a_blob_named_twice_is_refused():
    blob = layout.build_blob(CONTENTS)
    image = bytearray(layout.v6_bootstrap("i" * 64, blob))
    struct.pack_into("<I", image, 1168, 512)  # two blob entries ...
    image[4096 + 256 : 4096 + 512] = image[4096 : 4096 + 256]  # ... the same blob
    struct.pack_into("<I", image, 4096 + 256 + 64, 1)  # at its own index
    with pytest.raises(NydusFormatError, match="names a blob twice"):
        parse_bootstrap(bytes(image))


def test_v5_super_block_damage_is_named():
    head = struct.pack("<IIIIQ", 0x52414653, 0x500, 8192, 0x100000, 0x80 | 0x4)
    with pytest.raises(NydusFormatError, match="v5 super block"):
        parse_bootstrap(head)
    image = bytearray(8192)
    image[: len(head)] = head
    struct.pack_into("<Q", image, 32, 8192)  # inode table at the end ...
    struct.pack_into("<I", image, 56, 1 << 30)  # ... with a billion entries
    with pytest.raises(NydusFormatError, match="v5 inode table"):
        parse_bootstrap(bytes(image))
    struct.pack_into("<I", image, 8, 100)
    with pytest.raises(NydusFormatError, match="size 100"):
        parse_bootstrap(bytes(image))


def test_inline_bootstrap_is_found_at_the_blob_end():
    blob = layout.build_blob(CONTENTS)
    boot = layout.v6_bootstrap("x" * 64, blob)
    data = blob.data + boot + layout.tar_header("image.boot", len(boot))
    found = inline_bootstrap_range(data[-4096:], len(data))
    assert data[found.start : found.end] == boot
    assert inline_bootstrap_range(blob.data[-4096:], len(blob.data)) is None
    toc_blob = layout.build_blob(CONTENTS, toc=True)
    assert inline_bootstrap_range(toc_blob.data[-4096:], len(toc_blob.data)) is None
    huge = layout.tar_header("image.boot", 1 << 30)
    with pytest.raises(NydusFormatError, match="do not fit"):
        inline_bootstrap_range(huge, 4096)


def test_random_damage_is_a_format_error_or_a_consistent_result():
    rng = random.Random(14)
    blob = layout.build_blob(CONTENTS, v2=True, toc=True)
    image = layout.v6_bootstrap("g" * 64, blob)
    for _ in range(400):
        damaged = bytearray(image)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(1024, len(damaged))] ^= 1 << rng.randrange(8)
        cut = rng.choice([len(damaged), rng.randrange(len(damaged))])
        try:
            boot = parse_bootstrap(bytes(damaged[:cut]))
        except NydusFormatError:
            continue
        for chunk_map in boot.chunk_maps.values():
            assert all(c.compressed_end <= boot.blobs[0].compressed_size for c in chunk_map.chunks)
    tail_start = len(blob.data) - 8192
    for _ in range(400):
        damaged = bytearray(blob.data)
        damaged[rng.randrange(tail_start, len(damaged))] ^= 1 << rng.randrange(8)
        try:
            read_tail(bytes(damaged), reader := BlobTailReader(len(damaged)))
        except NydusFormatError:
            continue
        assert all(
            c.compressed_offset + c.compressed_size <= len(damaged) for c in reader.result().chunks
        )


@pytest.mark.parametrize("compression", ["zstd", "lz4_block", "none"])
@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_v5_bootstrap_gives_the_chunk_map(compression, algorithm):
    blob = layout.build_blob(CONTENTS, compression, algorithm)
    boot = parse_bootstrap(layout.v5_bootstrap("h" * 64, blob, compression, algorithm))
    assert boot.version == 5
    (entry,) = boot.blobs
    assert (entry.blob_id, entry.chunk_count) == ("h" * 64, len(CONTENTS))
    check_map(boot.chunk_maps["h" * 64], blob, Compression(compression), DigestAlgorithm(algorithm))


def test_v5_inodes_cannot_claim_more_chunks_than_the_bootstrap_holds():
    blob = layout.build_blob(CONTENTS)
    image = layout.v5_bootstrap("h" * 64, blob)
    file_slot = struct.unpack_from("<I", image, 8192 + 4)[0]
    # every inode-table slot names the file inode: still one inode, read once
    same = layout.v5_bootstrap("h" * 64, blob, inode_slots=[file_slot, file_slot])
    assert len(parse_bootstrap(same).chunk_maps["h" * 64].chunks) == len(CONTENTS)
    hostile = layout.v5_bootstrap("h" * 64, blob, child_count=0xFFFF_FFFF)
    with pytest.raises(NydusFormatError, match="claim more chunks"):
        parse_bootstrap(hostile)
    inside = layout.v5_bootstrap("h" * 64, blob, inode_slots=[1, file_slot])
    with pytest.raises(NydusFormatError, match="inside the super block"):
        parse_bootstrap(inside)


def test_tail_reader_never_asks_for_more_than_the_chunk_count_allows():
    """A TOC (or CI header) naming a huge array within a huge blob must not make the caller
    fetch it: the wanted ranges are bounded by `max_chunks`."""
    size = 1 << 40
    entries = b"".join(
        layout.toc_entry(name, "none", bytes(32), offset, length, length)
        for name, offset, length in (
            ("blob.meta", 1 << 20, 1 << 38),
            ("blob.meta.header", (1 << 20) + (1 << 38), 4096),
        )
    )
    window = (entries + layout.tar_header("rafs.blob.toc", len(entries))).rjust(4096, b"\0")
    reader = BlobTailReader(size)
    (wanted,) = reader.wanted()
    with pytest.raises(NydusFormatError, match="at most"):
        reader.feed({wanted: window})
    header = layout.ci_header(1, 3, 1 << 22, 1 << 20, (1 << 40) - 4096 - (1 << 20), 64 << 20)
    reader = BlobTailReader(size)
    (wanted,) = reader.wanted()
    with pytest.raises(NydusFormatError):
        reader.feed({wanted: header})
    blob = layout.build_blob(CONTENTS)
    reader = BlobTailReader(len(blob.data), max_chunks=2)
    with pytest.raises(NydusFormatError, match=r"allowed 1\.\.2"):
        read_tail(blob.data, reader)


def test_tail_reader_is_done_once_read():
    blob = layout.build_blob(CONTENTS)
    reader = BlobTailReader(len(blob.data))
    read_tail(blob.data, reader)
    assert reader.wanted() == ()
    with pytest.raises(RuntimeError):
        reader.feed({})
    with pytest.raises(RuntimeError):
        BlobTailReader(len(blob.data)).result()
