"""Chunk maps from a bootstrap layer, on layers written here from the tar, gzip and zstd
formats around synthetic bootstraps: every way a converter packs the bootstrap is found, any
other layer is {} after reading a few kilobytes, and damage is a NydusFormatError."""

from __future__ import annotations

import gzip
import io
import os
import random
import re
import tarfile
import time

import pytest
import zstandard

from dfagent.nydus import (
    MAX_BOOTSTRAP_SIZE,
    MAX_LAYER_SIZE,
    NydusFormatError,
    chunk_maps_of_layer,
    parse_bootstrap,
)
from tests.support import nydus_layout as layout
from tests.support.nydus import bootstrap_layer

BLOB = layout.build_blob([b"compressible text " * 4000, os.urandom(70_000), b"tail"])
BLOB_ID = "d" * 64
V6 = layout.v6_bootstrap(BLOB_ID, BLOB)
V5 = layout.v5_bootstrap(BLOB_ID, BLOB)


def _with_header_field(layer: bytes, offset: int, value: bytes, header_at: int = 0) -> bytes:
    """The header at `header_at` with bytes at `offset` replaced and its checksum redone."""
    block = bytearray(layer[header_at : header_at + 512])
    block[offset : offset + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return layer[:header_at] + bytes(block) + layer[header_at + 512 :]


def maps_of(data: bytes, size: int | None = None) -> dict:
    return chunk_maps_of_layer(io.BytesIO(data), len(data) if size is None else size)


def expected(bootstrap: bytes) -> dict:
    return {BLOB_ID: parse_bootstrap(bootstrap).chunk_maps[BLOB_ID]}


def tar_of(*members: tuple[str, bytes | None], fmt: int = tarfile.USTAR_FORMAT, **pax) -> bytes:
    """A tar of (name, data) members; data None makes a directory."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.pax_headers = dict(pax)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("bootstrap", [V5, V6], ids=["v5", "v6"])
def test_a_converted_bootstrap_layer_gives_the_bootstraps_chunk_maps(
    tmp_path, compression, bootstrap
):
    path = tmp_path / "bootstrap"
    path.write_bytes(bootstrap)
    assert maps_of(bootstrap_layer(path, compression)) == expected(bootstrap)


@pytest.mark.parametrize("bootstrap", [V5, V6], ids=["v5", "v6"])
def test_a_raw_bootstrap_pushed_as_a_blob_gives_its_chunk_maps(bootstrap):
    assert maps_of(bootstrap) == expected(bootstrap)


@pytest.mark.parametrize(
    "layer",
    [
        tar_of(("image.boot", V6)),
        tar_of(("./", None), ("./image/", None), ("./image/image.boot", V6)),
        tar_of(("image/", None), ("image/image.boot", V6), ("image/prefetch.files", b"/bin\n")),
        tar_of(("image", None), ("image/image.boot", V6), fmt=tarfile.PAX_FORMAT, comment="pax"),
        tar_of(("d" * 150, None), ("image/image.boot", V6), fmt=tarfile.GNU_FORMAT),
        tar_of(("image/" + "long/" * 30, None), ("image/image.boot", V6), fmt=tarfile.PAX_FORMAT),
        tar_of(("./" * 60 + "image/image.boot", V6)),
        tar_of(*[(f"note-{i}", b"x" * 1000) for i in range(7)], ("image/image.boot", V6)),
    ],
    ids=[
        "top-level",
        "dot-slash",
        "more-members",
        "pax",
        "gnu-long-name",
        "pax-long-name",
        "ustar-prefix",
        "7-small",
    ],
)
def test_every_way_a_tar_can_hold_the_bootstrap_is_found(layer):
    assert maps_of(layer) == expected(V6)
    assert maps_of(gzip.compress(layer)) == expected(V6)


def test_a_gzip_stream_of_several_members_is_read_across_them():
    layer = tar_of(("image/", None), ("image/image.boot", V6))
    cut = len(layer) // 3
    assert maps_of(gzip.compress(layer[:cut]) + gzip.compress(layer[cut:])) == expected(V6)


def test_pax_records_name_and_size_the_next_member():
    sized = tar_of(("image/image.boot", V6), fmt=tarfile.PAX_FORMAT, size=str(len(V6)))
    sized = _with_header_field(sized, 124, b"00000000000\0", header_at=1024)
    named = tar_of(("other-name", V6), fmt=tarfile.PAX_FORMAT, path="image/image.boot")
    assert named[1024 : 1024 + 10] == b"other-name"  # after the pax header and its record
    assert maps_of(sized) == expected(V6)
    assert maps_of(named) == expected(V6)


@pytest.mark.parametrize(
    "layer",
    [
        b"",
        b'{"architecture": "amd64", "rootfs": {"type": "layers"}}',
        gzip.compress(b'{"architecture": "amd64"}'),
        zstandard.ZstdCompressor().compress(b"not a tar " * 100),
        os.urandom(5000),
        tar_of(("bin/", None), ("bin/sh", os.urandom(200_000)), ("image/image.boot", V6)),
        tar_of(*[(f"f{i}", b"x") for i in range(8)], ("image/image.boot", V6)),
        tar_of(("etc/", None), ("etc/hostname", b"node\n")),
        tar_of(("image/", None), ("image/other.boot", V6)),
    ],
    ids=[
        "empty",
        "json",
        "gzip-json",
        "zstd-text",
        "random",
        "big-member-first",
        "boot-after-8-members",
        "ordinary-small",
        "other-name",
    ],
)
def test_anything_else_is_no_bootstrap_layer(layer):
    assert maps_of(layer) == {}
    assert maps_of(gzip.compress(layer)) == {}


class Unreadable(io.BytesIO):
    """A file that fails the test if more than `allowed` bytes are read from it."""

    def __init__(self, data: bytes, allowed: int) -> None:
        super().__init__(data)
        self.allowed = allowed

    def read(self, size: int | None = -1, /) -> bytes:
        data = super().read(size)
        assert self.tell() <= self.allowed, "read past what the check needs"
        return data


def test_a_layer_beyond_the_cap_is_not_read():
    layer = bootstrap_layer_bytes(V6)
    assert chunk_maps_of_layer(Unreadable(layer, 0), MAX_LAYER_SIZE + 1) == {}


def test_a_bootstrap_beyond_the_cap_is_not_read():
    header = tarfile.TarInfo("image/image.boot")
    header.size = MAX_BOOTSTRAP_SIZE + 1
    layer = tar_of(("image/", None))[:512] + header.tobuf(tarfile.USTAR_FORMAT) + bytes(8192)
    assert chunk_maps_of_layer(Unreadable(layer, 1536), len(layer)) == {}
    assert chunk_maps_of_layer(Unreadable(V6, 1028), MAX_BOOTSTRAP_SIZE + 1) == {}


def bootstrap_layer_bytes(bootstrap: bytes) -> bytes:
    return gzip.compress(tar_of(("image", None), ("image/image.boot", bootstrap)))


@pytest.mark.parametrize(
    "blob_id",
    ["x" * 64, "D" * 64, "d" * 63, "blob-toc", "sha256:" + "d" * 57],  # ids hold 64 bytes,
)
def test_blob_ids_that_are_not_a_sha256_hex_are_left_out(blob_id):
    assert maps_of(bootstrap_layer_bytes(layout.v6_bootstrap(blob_id, BLOB))) == {}


def test_a_blob_without_chunks_is_left_out():
    empty = layout.v6_bootstrap(BLOB_ID, BLOB, chunk_records=[])
    assert parse_bootstrap(empty).blobs
    assert maps_of(bootstrap_layer_bytes(empty)) == {}


GOOD = tar_of(("image/image.boot", V6))


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (tar_of(("image", None), ("image/image.boot", os.urandom(20_000))), "neither"),
        (tar_of(("image/image.boot", V6[:5000])), "needs bytes|neither"),
        (GOOD[:300] + b"\xff" + GOOD[301:], "checksum"),
        (_with_header_field(GOOD, 124, b"0000000x000\0"), "not octal"),
        (_with_header_field(GOOD, 124, b"\xff" * 12), "negative"),
        (_with_header_field(GOOD, 156, b"2"), "not a regular file"),
        (GOOD[:1024], "bootstrap ends after"),
        (tar_of(("image/", None))[:512] + b"garbage" * 100, "ustar magic"),
        (tar_of(("image", None), ("image/image.boot", V6), fmt=tarfile.PAX_FORMAT, size="9x"),
         "pax size"),
    ],
    ids=[
        "garbage-boot",
        "short-boot",
        "checksum",
        "octal",
        "negative-size",
        "symlink",
        "truncated-tar",
        "second-header",
        "pax-size",
    ],
)  # fmt: skip
def test_a_damaged_bootstrap_layer_is_a_format_error(layer, message):
    with pytest.raises(NydusFormatError, match=message):
        maps_of(layer)


def test_a_truncated_or_corrupt_compressed_stream_is_a_format_error():
    layer = tar_of(("image", None), ("image/image.boot", V6 + os.urandom(300_000)))
    packed = gzip.compress(layer)
    for cut in (2, 10, 100, len(packed) // 2, len(packed) - 5000):
        with pytest.raises(NydusFormatError, match="truncated"):
            maps_of(packed[:cut])
    with pytest.raises(NydusFormatError, match="gzip"):
        maps_of(packed[:2] + b"\x07" + packed[3:])  # compression method 7: not deflate
    packed = zstandard.ZstdCompressor().compress(layer)  # several zstd blocks: cuts after the first
    for cut in (len(packed) // 2, len(packed) * 3 // 4):
        with pytest.raises(NydusFormatError, match="ends after"):
            maps_of(packed[:cut])
    with pytest.raises(NydusFormatError, match="zstd"):
        maps_of(packed[:4] + b"garbage" * 10)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_damage_anywhere_is_a_format_error_or_a_consistent_map(tmp_path, compression):
    path = tmp_path / "bootstrap"
    path.write_bytes(V6)
    layer = bootstrap_layer(path, compression)
    rng = random.Random(compression)
    damaged = [layer[:cut] for cut in range(0, len(layer), max(1, len(layer) // 150))]
    for _ in range(300):
        flipped = bytearray(layer)
        flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        damaged.append(bytes(flipped))
    for data in damaged:
        try:
            found = maps_of(data)
        except NydusFormatError:
            continue
        assert all(re.fullmatch("[0-9a-f]{64}", key) for key in found)
        assert all(
            chunk_map.blob_id == key and chunk_map.chunks for key, chunk_map in found.items()
        )


@pytest.fixture(scope="module")
def ordinary_layer(tmp_path_factory) -> tuple:
    """A 200 MiB gzip image layer of random data, not a bootstrap layer."""
    path = tmp_path_factory.mktemp("ordinary") / "layer.tar.gz"
    rng = random.Random(7)
    size = 200 << 20
    with gzip.open(path, "wb", compresslevel=0) as out:
        out.write(tar_of(("usr/", None), ("usr/lib/", None))[:1024])
        big = tarfile.TarInfo("usr/lib/libbig.so")
        big.size = size
        out.write(big.tobuf(tarfile.USTAR_FORMAT))
        for _ in range(size >> 20):
            out.write(rng.randbytes(1 << 20))
        out.write(bytes(1024))
    return path, path.stat().st_size


def test_an_ordinary_200_mib_gzip_layer_costs_almost_nothing(ordinary_layer):
    path, size = ordinary_layer
    assert size > 200 << 20
    with path.open("rb") as file:
        started = time.perf_counter()
        assert chunk_maps_of_layer(file, size) == {}
        elapsed = time.perf_counter() - started
        assert file.tell() <= 128 << 10  # the first read of compressed bytes, no more
    assert elapsed < 0.5
