"""A real nydus image in the real registry, published the way image converters publish one:
a manifest whose layers are the data blob and the bootstrap layer (a tar.gz holding
`image/image.boot`), with what tests need to read the blob chunk by chunk and to damage it."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from dfagent.nydus import Chunk, parse_bootstrap
from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.metrics import metric
from tests.support.nydus import bootstrap_layer, build_image
from tests.support.registry import Registry

BLOB_ANNOTATIONS = {"containerd.io/snapshot/nydus-blob": "true"}
BOOTSTRAP_ANNOTATIONS = {"containerd.io/snapshot/nydus-bootstrap": "true"}
MAPS_FROM_BOOTSTRAPS = 'dfagent_chunk_maps_total{how="bootstrap"}'


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class NydusImage:
    """One nydus image (one data blob) under `repo:tag`. `chunks` are the data blob's chunks
    in blob order, as the bootstrap records them."""

    repo: str
    tag: str
    bootstrap: Path  # the bootstrap file, for nydusd
    bootstrap_layer: bytes
    blob: bytes
    chunks: tuple[Chunk, ...]

    @property
    def bootstrap_digest(self) -> str:
        return digest_of(self.bootstrap_layer)

    @property
    def blob_digest(self) -> str:
        return digest_of(self.blob)

    def blob_url(self, registry_url: str) -> str:
        return f"{registry_url}/v2/{self.repo}/blobs/{self.blob_digest}"

    def bootstrap_url(self, registry_url: str) -> str:
        return f"{registry_url}/v2/{self.repo}/blobs/{self.bootstrap_digest}"

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Blob bytes `start .. end - 1` of the chunks at positions `first .. last` (blob
        order): a run of whole chunks, as nydusd asks for them."""
        return self.chunks[first].compressed_offset, self.chunks[last].compressed_end

    def push_to(self, registry: Registry) -> bytes:
        """Push the data blob, the bootstrap layer, a config and the manifest (data blob
        first, bootstrap last, as converters order them); returns the manifest."""
        config = {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {
                "type": "layers",
                "diff_ids": [
                    self.blob_digest,
                    digest_of(gzip.decompress(self.bootstrap_layer)),
                ],
            },
        }
        return registry.push_manifest(
            self.repo,
            self.tag,
            json.dumps(config).encode(),
            [self.blob, self.bootstrap_layer],
            annotations=[BLOB_ANNOTATIONS, BOOTSTRAP_ANNOTATIONS],
        )


def push_nydus_image(
    registry: Registry,
    repo: str,
    source: Path,
    out: Path,
    *,
    tag: str = "latest",
    fs_version: int = 6,
    compressor: str = "zstd",
    digester: str = "blake3",
) -> NydusImage:
    """Build `source` with the real nydus-image into `out` and push it to `registry`."""
    built = build_image(source, out, fs_version, compressor=compressor, digester=digester)
    (blob_file,) = built.blobs
    blob = blob_file.read_bytes()
    if blob_file.name != hashlib.sha256(blob).hexdigest():
        raise AssertionError(f"nydus-image named the blob {blob_file.name}, not by its sha256")
    boot = parse_bootstrap(built.bootstrap.read_bytes())
    (entry,) = boot.blobs
    assert entry.blob_id == blob_file.name, (entry.blob_id, blob_file.name)
    image = NydusImage(
        repo=repo,
        tag=tag,
        bootstrap=built.bootstrap,
        bootstrap_layer=bootstrap_layer(built.bootstrap),
        blob=blob,
        chunks=boot.chunk_maps[entry.blob_id].chunks,
    )
    image.push_to(registry)
    return image


def pull_bootstrap(agent: AgentProcess, registry_url: str, image: NydusImage) -> None:
    """GET the bootstrap layer whole through the agent's proxy, naming `registry_url`, as
    containerd pulls it; the bytes must be the layer's."""
    reply = send(agent.proxy_port, image.bootstrap_url(registry_url))
    assert reply.status == 200, (reply.status, reply.body[:300])
    assert reply.body == image.bootstrap_layer


def maps_learned(agent: AgentProcess) -> float:
    """Chunk maps the agent learned from bootstraps."""
    return metric(agent, MAPS_FROM_BOOTSTRAPS)
