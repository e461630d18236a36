"""Fixtures of the container stack: the busybox image (OCI, and its nydus conversion) in the
real registry, and nodes (containerd + nydus-snapshotter) torn down even when a test fails."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.registry import Registry
from tests.support.stack import (
    Node,
    NydusImage,
    busybox_layer,
    convert_and_push,
    push_oci_image,
    stack_missing,
)

REPO = "stack/busybox"


@dataclass
class StackImage:
    nydus: NydusImage
    files: dict[str, bytes] = field(repr=False)  # path in the container -> its bytes


@pytest.fixture(scope="session")
def stack_image(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> StackImage:
    """busybox plus a few files: small text, two 1.5 MiB random files, and 8 MiB of random
    bytes no scenario reads (so a lazy start takes a fraction of the blob)."""
    missing = stack_missing()
    if missing is not None:
        pytest.skip(missing)
    files = {
        "data/greeting": b"hello from a lazily started container\n" * 20,
        "data/one": os.urandom(1536 * 1024),
        "data/two": os.urandom(1536 * 1024),
        "data/bulk": os.urandom(8 << 20),
    }
    push_oci_image(registry, REPO, "oci", busybox_layer(files))
    nydus = convert_and_push(tmp_path_factory.mktemp("convert"), registry, REPO, "oci", "nydus")
    return StackImage(nydus, {f"/{path}": data for path, data in files.items()})


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator[Callable[..., Node]]:
    """`node_factory(name, nydusd_config=..., mirrors=...)` starts a node under tmp_path."""
    started: list[Node] = []

    def start(name: str, **options: Any) -> Node:
        node = Node(tmp_path / name, **options)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.stop()
