"""Image manifests and indexes (OCI and Docker media types): which manifests of an index a
platform selects, and which blobs a manifest names. Pure: parsing and choosing only."""

from __future__ import annotations

import json
import platform as host_platform
from dataclasses import dataclass
from typing import Any

from dfagent.core.digest import Digest, InvalidDigest

__all__ = [
    "ACCEPT",
    "BadManifest",
    "Descriptor",
    "Platform",
    "blobs_of",
    "is_index",
    "parse",
    "select",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_INDEXES = (OCI_INDEX, DOCKER_LIST)
_MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT = ", ".join((*_INDEXES, *_MANIFESTS))
_MACHINES = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}


class BadManifest(ValueError):
    """A manifest we cannot use (the message says why)."""


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"platform must be os/arch[/variant], got {text!r}")
        return cls(*parts)

    @classmethod
    def host(cls) -> Platform:
        machine = host_platform.machine().lower()
        return cls("linux", _MACHINES.get(machine, machine))

    def matches(self, described: dict[str, Any]) -> bool:
        """Whether an index entry's `platform` is this one (no variant here matches any)."""
        if described.get("os") != self.os or described.get("architecture") != self.architecture:
            return False
        return self.variant is None or described.get("variant") == self.variant

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


_NYDUS_BOOTSTRAP = "containerd.io/snapshot/nydus-bootstrap"


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A reference to content: a manifest in an index, or a config or layer blob."""

    digest: Digest
    size: int
    media_type: str
    platform: str | None = None  # os/arch[/variant] of a manifest chosen from an index
    nydus_bootstrap: bool = False  # a nydus image's bootstrap layer (it maps the data blobs)

    @classmethod
    def of(cls, entry: object, where: str) -> Descriptor:
        if not isinstance(entry, dict):
            raise BadManifest(f"{where} is not an object")
        size = entry.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadManifest(f"{where}.size must be a non-negative integer")
        try:
            digest = Digest.parse(str(entry.get("digest")))
        except InvalidDigest as exc:
            raise BadManifest(f"{where}.digest: {exc}") from None
        described = entry.get("platform")
        shown = None
        if isinstance(described, dict):
            parts = (described.get("os"), described.get("architecture"), described.get("variant"))
            shown = "/".join(str(p) for p in parts if p)
        annotations = entry.get("annotations")
        bootstrap = isinstance(annotations, dict) and annotations.get(_NYDUS_BOOTSTRAP) == "true"
        return cls(digest, size, str(entry.get("mediaType", "")), shown, bootstrap)


def parse(body: bytes, media_type: str) -> dict[str, Any]:
    """The manifest or index as JSON, with its media type settled (from the body when the
    registry's Content-Type is vague)."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise BadManifest(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schemaVersion") != 2:
        raise BadManifest("only schemaVersion 2 manifests and indexes are supported")
    kind = document.get("mediaType") or media_type.partition(";")[0].strip()
    if kind not in (*_INDEXES, *_MANIFESTS):
        kind = OCI_INDEX if "manifests" in document else OCI_MANIFEST
    document["mediaType"] = kind
    return document


def is_index(document: dict[str, Any]) -> bool:
    return document["mediaType"] in _INDEXES


def select(index: dict[str, Any], platforms: list[Platform] | None) -> list[Descriptor]:
    """The index's manifests for these platforms (all of them for None). Every entry that
    matches is kept: a nydus index lists a nydus manifest beside the OCI one of a platform."""
    entries = index.get("manifests")
    if not isinstance(entries, list):
        raise BadManifest("an index needs a manifests list")
    chosen = []
    for position, entry in enumerate(entries):
        descriptor = Descriptor.of(entry, f"manifests[{position}]")
        described = entry.get("platform") if isinstance(entry, dict) else None
        if platforms is None or (
            isinstance(described, dict) and any(p.matches(described) for p in platforms)
        ):
            chosen.append(descriptor)
    if not chosen:
        wanted = ", ".join(map(str, platforms or ()))
        offered = ", ".join(str(Descriptor.of(e, "m").platform) for e in entries) or "none"
        raise BadManifest(f"no manifest for {wanted} (the index has {offered})")
    return chosen


def blobs_of(manifest: dict[str, Any]) -> list[Descriptor]:
    """The config blob and every layer (a nydus image's bootstrap is one of its layers)."""
    layers = manifest.get("layers")
    if not isinstance(layers, list):
        raise BadManifest("an image manifest needs a layers list")
    found = [Descriptor.of(manifest.get("config"), "config")]
    found += [Descriptor.of(layer, f"layers[{i}]") for i, layer in enumerate(layers)]
    return found
