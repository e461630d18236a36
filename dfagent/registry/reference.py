"""Image references as operators type them: `[registry/]repository[:tag][@digest]`.

The grammar is the one docker and containerd accept: the first path component names a
registry when it looks like a host (has a dot or a port, or is `localhost`); otherwise the
image lives on Docker Hub, where a one-component name is an official `library/` image.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from yarl import URL

from dfagent.core.digest import Digest, InvalidDigest

__all__ = ["BadReference", "ImageReference", "blob_url", "parse_image"]

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[(?P<v6>[0-9A-Fa-f:.]+)\])(?::(?P<port>\d{1,5}))?",
    re.ASCII,
)


class BadReference(ValueError):
    """Not an image reference."""


@dataclass(frozen=True, slots=True)
class ImageReference:
    registry: str  # host[:port] as written; "docker.io" for Docker Hub
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def reference(self) -> str:
        """What to ask the manifest endpoint for: the digest when pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    @property
    def api_host(self) -> str:
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    def __str__(self) -> str:
        text = f"{self.registry}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_image(text: str) -> ImageReference:
    """Parse `[registry/]repository[:tag][@sha256:...]`; raise BadReference saying what is wrong."""
    rest, _, pinned = text.strip().partition("@")
    digest = None
    if pinned:
        try:
            digest = Digest.parse(pinned)
        except InvalidDigest as exc:
            raise BadReference(f"{text!r}: {exc}") from None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        _check_registry(first, text)
        registry, path = first, remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        tag, path = maybe_tag, name
        if not _TAG.fullmatch(tag):
            raise BadReference(f"{text!r}: {tag!r} is not a valid tag")
    components = path.split("/")
    if not path or not all(_COMPONENT.fullmatch(c) for c in components):
        raise BadReference(
            f"{text!r}: the repository must be lower-case components separated by '/'"
        )
    if registry == DOCKER_HUB and len(components) == 1:
        path = f"library/{path}"
    return ImageReference(registry, path, tag, digest)


def _check_registry(host: str, text: str) -> None:
    """Raise BadReference unless `host` is a host name or [IPv6 address], with a port 1-65535."""
    match = _HOST.fullmatch(host)
    if match is None:
        raise BadReference(f"{text!r}: {host!r} is not a registry host")
    port = match.group("port")
    if port is not None and not 1 <= int(port) <= 65535:
        raise BadReference(f"{text!r}: the port of {host!r} must be from 1 to 65535")
    if match.group("v6") is not None:
        try:
            ipaddress.IPv6Address(match.group("v6"))
        except ValueError:
            raise BadReference(f"{text!r}: {host!r} is not a registry host") from None


def blob_url(base: URL, repository: str, digest: Digest) -> URL:
    return base.with_path(f"/v2/{repository}/blobs/{digest}")
