"""dfagent's nydus parsers against images built by the real nydus-image: the chunk maps equal
what `nydus-image check -v` prints, and every real chunk of the real blob proves out while a
one-byte flip does not."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfagent.nydus import (
    BlobTailReader,
    Bootstrap,
    ChunkMismatch,
    Compression,
    DigestAlgorithm,
    NydusFormatError,
    inline_bootstrap_range,
    parse_bootstrap,
    verify_chunk,
)
from dfagent.nydus.codec import decompress
from tests.support.nydus import make_tree
from tests.support.tools import require

pytestmark = pytest.mark.slow

_CHUNK_LINE = re.compile(
    r"chunk: id (?P<id>[0-9a-f]{64}), index (?P<index>\d+), blob_index (?P<blob>\d+), "
    r"file_offset \d+, compressed (?P<c_off>\d+)/(?P<c_size>\d+), "
    r"uncompressed (?P<u_off>\d+)/(?P<u_size>\d+)"
)
_BLOB_LINE = re.compile(r"^\s*(?P<index>\d+): (?P<id>[^,\s]+), .*chunks: 0x(?P<count>[0-9a-f]+)")


@dataclass(frozen=True)
class Build:
    bootstrap: bytes
    blob_files: dict[str, Path]  # file name -> path
    check_output: str


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    root = make_tree(tmp_path_factory.mktemp("nydus-formats") / "tree", seed=14)
    # a file sharing every chunk with another: the chunk is stored and recorded once
    shutil.copy(root / "bin" / "large-text", root / "bin" / "large-text-copy")
    return root


def build(tree: Path, out: Path, *options: str) -> Build:
    nydus_image = require("nydus-image")
    blob_dir = out / "blobs"
    blob_dir.mkdir(parents=True)
    bootstrap = out / "bootstrap"
    subprocess.run(
        [
            nydus_image,
            "create",
            *options,
            "--bootstrap",
            str(bootstrap),
            "--blob-dir",
            str(blob_dir),
            str(tree),
        ],
        check=True,
        capture_output=True,
    )
    check = subprocess.run(
        [nydus_image, "check", "-B", str(bootstrap), "-v"],
        check=True,
        capture_output=True,
        text=True,
    )
    return Build(bootstrap.read_bytes(), {p.name: p for p in blob_dir.iterdir()}, check.stdout)


def printed_chunks(output: str) -> set[tuple]:
    """(blob index, chunk index, digest, c_off, c_size, u_off, u_size) for every chunk line."""
    return {
        (
            int(m["blob"]),
            int(m["index"]),
            m["id"],
            int(m["c_off"]),
            int(m["c_size"]),
            int(m["u_off"]),
            int(m["u_size"]),
        )
        for m in _CHUNK_LINE.finditer(output)
    }


def parsed_chunks(boot: Bootstrap) -> set[tuple[int, int, str, int, int, int, int]]:
    """Every chunk of every blob in `boot`, in the shape printed_chunks reads from check -v."""
    return {
        (
            blob.index,
            c.index,
            c.digest.hex(),
            c.compressed_offset,
            c.compressed_size,
            c.uncompressed_offset,
            c.uncompressed_size,
        )
        for blob in boot.blobs
        for c in boot.chunk_maps[blob.blob_id].chunks
    }


def printed_blobs(output: str) -> list[tuple[str, int]]:
    return [(m["id"], int(m["count"], 16)) for m in map(_BLOB_LINE.match, output.splitlines()) if m]


def blob_file(result: Build, blob_id: str) -> Path:
    if blob_id in result.blob_files:
        return result.blob_files[blob_id]
    (only,) = result.blob_files.values()  # builds make one blob; its file name may differ
    return only


COMBOS = [
    pytest.param(version, compressor, digester, (), id=f"v{version}-{compressor}-{digester}")
    for version in (5, 6)
    for compressor in ("zstd", "lz4_block", "none")
    for digester in ("blake3", "sha256")
] + [
    pytest.param(6, "zstd", "blake3", ("--features", "blob-toc"), id="v6-blob-toc"),
    pytest.param(6, "lz4_block", "sha256", ("--features", "blob-toc"), id="v6-blob-toc-lz4"),
]


@pytest.mark.parametrize(("version", "compressor", "digester", "extra"), COMBOS)
def test_chunk_maps_equal_nydus_image_check_and_every_chunk_proves_out(
    tree, tmp_path, version, compressor, digester, extra
):
    result = build(
        tree,
        tmp_path,
        "--fs-version",
        str(version),
        "--compressor",
        compressor,
        "--digester",
        digester,
        *extra,
    )
    boot = parse_bootstrap(result.bootstrap)
    assert boot.version == version

    blobs = printed_blobs(result.check_output)
    assert [(b.blob_id, b.chunk_count) for b in boot.blobs] == blobs
    expected = printed_chunks(result.check_output)
    assert expected, result.check_output[:2000]
    parsed = parsed_chunks(boot)
    assert parsed == expected

    for blob in boot.blobs:
        assert blob.compression is Compression(compressor)
        assert blob.digest_algorithm is DigestAlgorithm(digester)
        chunk_map = boot.chunk_maps[blob.blob_id]
        assert len(chunk_map.chunks) == blob.chunk_count
        data = blob_file(result, blob.blob_id).read_bytes()
        for chunk in chunk_map.chunks:
            stored = data[chunk.compressed_offset : chunk.compressed_end]
            verify_chunk(chunk, stored)
        assert any(c.compression is not Compression.NONE for c in chunk_map.chunks) == (
            compressor != "none"
        )
        for chunk in chunk_map.chunks[:: max(1, len(chunk_map.chunks) // 8)]:
            flipped = bytearray(data[chunk.compressed_offset : chunk.compressed_end])
            flipped[len(flipped) // 2] ^= 0x01
            with pytest.raises(ChunkMismatch):
                verify_chunk(chunk, bytes(flipped))


@pytest.mark.parametrize(
    "extra",
    [(), ("--features", "blob-toc")],
    ids=["plain", "blob-toc"],
)
@pytest.mark.parametrize("compressor", ["zstd", "lz4_block"])
def test_blob_tail_metadata_agrees_with_the_bootstrap(tree, tmp_path, extra, compressor):
    result = build(tree, tmp_path, "--fs-version", "6", "--compressor", compressor, *extra)
    boot = parse_bootstrap(result.bootstrap)
    for entry in boot.blobs:
        data = blob_file(result, entry.blob_id).read_bytes()
        expected = boot.chunk_maps[entry.blob_id]
        digests = tuple(c.digest for c in sorted(expected.chunks, key=lambda c: c.index))
        for known in (entry, None):
            reader = BlobTailReader(len(data), known)
            rounds = 0
            while ranges := reader.wanted():
                rounds += 1
                reader.feed({r: data[r.start : r.end] for r in ranges})
            assert rounds <= 2
            tail = reader.result()
            if "blob-toc" in extra:
                assert tail.digests == digests
            chunk_map = tail.chunk_map(
                entry.blob_id, entry.compression, entry.digest_algorithm, digests
            )
            assert chunk_map == expected


@pytest.mark.parametrize("toc", [False, True], ids=["no-toc", "blob-toc"])
def test_inline_meta_blob_carries_a_bootstrap_that_maps_its_chunks(tree, tmp_path, toc):
    """--blob-inline-meta writes no separate bootstrap: it ends the blob (`image.boot`, raw;
    zstd and named by the TOC with blob-toc) and names the blob by a placeholder id."""
    nydus_image = require("nydus-image")
    blob_dir = tmp_path / "blobs"
    blob_dir.mkdir()
    features = ("--features", "blob-toc") if toc else ()
    subprocess.run(
        [
            nydus_image,
            "create",
            "--fs-version",
            "6",
            "--compressor",
            "zstd",
            "--blob-inline-meta",
            *features,
            "--blob-dir",
            str(blob_dir),
            str(tree),
        ],
        check=True,
        capture_output=True,
    )
    (path,) = blob_dir.iterdir()
    data = path.read_bytes()
    if toc:
        reader = BlobTailReader(len(data))
        while ranges := reader.wanted():
            reader.feed({r: data[r.start : r.end] for r in ranges})
        (entry,) = [e for e in reader.result().toc if e.name == "image.boot"]
        stored = data[entry.compressed_offset : entry.range.end]
        bootstrap = decompress(entry.compression, stored, entry.uncompressed_size)
        assert hashlib.sha256(bootstrap).digest() == entry.sha256
    else:
        assert inline_bootstrap_range(data[-4096:], len(data)) is not None
        reader = BlobTailReader(len(data))
        (window,) = reader.wanted()
        with pytest.raises(NydusFormatError, match="inlined bootstrap"):
            reader.feed({window: data[window.start : window.end]})
        found = inline_bootstrap_range(data[-4096:], len(data))
        bootstrap = data[found.start : found.end]
    boot_path = tmp_path / "inline.boot"
    boot_path.write_bytes(bootstrap)
    check = subprocess.run(
        [nydus_image, "check", "-B", str(boot_path), "-v"],
        check=True,
        capture_output=True,
        text=True,
    )
    boot = parse_bootstrap(bootstrap)
    (blob,) = boot.blobs
    assert blob.blob_id == "x" * 64
    assert printed_blobs(check.stdout) == [("inline", blob.chunk_count)]  # nydus names it by file
    chunk_map = boot.chunk_maps[blob.blob_id]
    assert parsed_chunks(boot) == printed_chunks(check.stdout)
    for chunk in chunk_map.chunks:
        verify_chunk(chunk, data[chunk.compressed_offset : chunk.compressed_end])
    reader = BlobTailReader(len(data), blob)
    while ranges := reader.wanted():
        reader.feed({r: data[r.start : r.end] for r in ranges})
    digests = tuple(c.digest for c in sorted(chunk_map.chunks, key=lambda c: c.index))
    tail = reader.result()
    assert tail.chunk_map(blob.blob_id, blob.compression, blob.digest_algorithm, digests) == (
        chunk_map
    )
    assert (tail.digests == digests) if toc else tail.digests is None


@pytest.mark.parametrize("version", [5, 6])
def test_damaged_real_metadata_is_a_format_error_or_a_consistent_map(tree, tmp_path, version):
    """Truncated and bit-flipped real bootstraps and blob tails: the parsers either refuse
    them with a NydusFormatError or return maps whose every chunk lies inside the blob."""
    extra = ("--features", "blob-toc") if version == 6 else ()
    result = build(tree, tmp_path, "--fs-version", str(version), *extra)
    rng = random.Random(version)
    original = result.bootstrap
    damaged = [original[:cut] for cut in range(0, len(original), max(1, len(original) // 200))]
    for _ in range(300):
        flipped = bytearray(original)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        damaged.append(bytes(flipped))
    for image in damaged:
        try:
            boot = parse_bootstrap(image)
        except NydusFormatError:
            continue
        for chunk_map in boot.chunk_maps.values():
            for before, after in itertools.pairwise(chunk_map.chunks):
                assert before.compressed_end <= after.compressed_offset
    if version == 5:
        return
    (data,) = (p.read_bytes() for p in result.blob_files.values())
    tail_start = len(data) - 8192
    for _ in range(300):
        flipped = bytearray(data)
        flipped[tail_start + rng.randrange(8192)] ^= 1 << rng.randrange(8)
        reader = BlobTailReader(len(flipped))
        try:
            while ranges := reader.wanted():
                reader.feed({r: bytes(flipped[r.start : r.end]) for r in ranges})
            tail = reader.result()
        except NydusFormatError:
            continue
        assert all(c.compressed_offset + c.compressed_size <= len(data) for c in tail.chunks)


@pytest.mark.parametrize("version", [5, 6])
def test_layered_image_maps_the_chunks_of_every_blob(tree, tmp_path, version):
    """A second layer built on the first (--parent-bootstrap) names both blobs."""
    lower = build(tree, tmp_path / "lower", "--fs-version", str(version))
    upper_tree = tmp_path / "upper-tree"
    (upper_tree / "new").mkdir(parents=True)
    (upper_tree / "new" / "data").write_bytes(random.Random(2).randbytes(3_000_000))
    shutil.copytree(tree / "etc", upper_tree / "etc")
    upper = build(
        upper_tree,
        tmp_path / "upper",
        "--fs-version",
        str(version),
        "--parent-bootstrap",
        str(tmp_path / "lower" / "bootstrap"),
    )
    boot = parse_bootstrap(upper.bootstrap)
    assert len(boot.blobs) == 2
    assert [(b.blob_id, b.chunk_count) for b in boot.blobs] == printed_blobs(upper.check_output)
    parsed = parsed_chunks(boot)
    assert printed_chunks(upper.check_output) <= parsed  # check prints the chunks files use
    files = {**lower.blob_files, **upper.blob_files}
    for blob in boot.blobs:
        assert len(boot.chunk_maps[blob.blob_id].chunks) == blob.chunk_count
        data = files[blob.blob_id].read_bytes()
        for chunk in boot.chunk_maps[blob.blob_id].chunks:
            verify_chunk(chunk, data[chunk.compressed_offset : chunk.compressed_end])
