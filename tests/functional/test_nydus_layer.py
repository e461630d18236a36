"""Chunk maps from the bootstrap layers of images built by the real nydus-image, packed as a
nydus converter packs them: the maps are the bootstrap's own, keyed by the sha256 of each real
data blob file, and every chunk of that file proves out against them."""

from __future__ import annotations

import hashlib
import io
import random
import subprocess
from pathlib import Path

import pytest

from dfagent.nydus import NydusFormatError, chunk_maps_of_layer, parse_bootstrap, verify_chunk
from tests.support.nydus import Image, bootstrap_layer, build_image, make_tree
from tests.support.tools import require

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return make_tree(tmp_path_factory.mktemp("nydus-layer") / "tree", seed=21)


@pytest.fixture(scope="module")
def images(tree, tmp_path_factory) -> dict[int, Image]:
    root = tmp_path_factory.mktemp("nydus-layer-images")
    return {version: build_image(tree, root / f"v{version}", version) for version in (5, 6)}


def maps_in_file(path: Path) -> dict:
    with path.open("rb") as file:
        return chunk_maps_of_layer(file, path.stat().st_size)


def check_against_blobs(found: dict, bootstrap: Path, blobs: list[Path]) -> None:
    """`found` maps exactly `blobs`, by their sha256, as the bootstrap does; every chunk of
    every blob file proves out."""
    boot = parse_bootstrap(bootstrap.read_bytes())
    contents = {hashlib.sha256(data).hexdigest(): data for data in map(Path.read_bytes, blobs)}
    assert set(found) == set(contents)
    for digest, data in contents.items():
        assert found[digest] == boot.chunk_maps[digest]
        assert found[digest].chunks
        for chunk in found[digest].chunks:
            verify_chunk(chunk, data[chunk.compressed_offset : chunk.compressed_end])


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
@pytest.mark.parametrize("version", [5, 6])
def test_a_bootstrap_layer_maps_every_chunk_of_the_real_blob(
    images, tmp_path, version, compression
):
    image = images[version]
    layer = tmp_path / "layer"
    layer.write_bytes(bootstrap_layer(image.bootstrap, compression))
    check_against_blobs(maps_in_file(layer), image.bootstrap, image.blobs)


@pytest.mark.parametrize("version", [5, 6])
def test_a_raw_bootstrap_blob_maps_every_chunk_of_the_real_blob(images, version):
    image = images[version]
    check_against_blobs(maps_in_file(image.bootstrap), image.bootstrap, image.blobs)


@pytest.mark.parametrize("version", [5, 6])
def test_a_layered_images_bootstrap_maps_both_blobs(tree, tmp_path, version):
    lower = build_image(tree, tmp_path / "lower", version)
    upper_tree = tmp_path / "upper-tree"
    upper_tree.mkdir()
    (upper_tree / "added").write_bytes(random.Random(5).randbytes(2_500_000))
    upper_blobs = tmp_path / "upper" / "blobs"
    upper_blobs.mkdir(parents=True)
    bootstrap = tmp_path / "upper" / "bootstrap"
    subprocess.run(
        [require("nydus-image"), "create", "--fs-version", str(version),
         "--parent-bootstrap", str(lower.bootstrap), "--bootstrap", str(bootstrap),
         "--blob-dir", str(upper_blobs), str(upper_tree)],
        check=True, capture_output=True,
    )  # fmt: skip
    layer = tmp_path / "layer.tar.gz"
    layer.write_bytes(bootstrap_layer(bootstrap))
    blobs = [*lower.blobs, *upper_blobs.iterdir()]
    assert len(blobs) == 2
    check_against_blobs(maps_in_file(layer), bootstrap, blobs)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_truncated_real_layer_yields_no_maps(images, compression):
    """A cut gzip stream is a format error; so is a cut zstd stream, unless the cut falls in
    its first block (all of this small layer), which then reads as too short to be a tar."""
    layer = bootstrap_layer(images[6].bootstrap, compression)
    assert chunk_maps_of_layer(io.BytesIO(layer), len(layer))
    for cut in range(2, len(layer) * 9 // 10, max(1, len(layer) // 50)):  # 2: the magic
        try:
            found = chunk_maps_of_layer(io.BytesIO(layer[:cut]), cut)
        except NydusFormatError:
            continue
        assert compression == "zstd", f"cut at {cut}"
        assert found == {}
