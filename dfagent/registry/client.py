"""Reading an image's manifests from its registry, with the registry's own authorization
flow, down to the list of blobs a platform needs (`RegistryClient.resolve`)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import aiohttp
from yarl import URL

from dfagent.core.digest import Digest
from dfagent.errors import OriginError, OriginHTTPError
from dfagent.origin.unreachable import unreachable
from dfagent.registry import manifests
from dfagent.registry.auth import RegistryAuth
from dfagent.registry.credentials import Credentials
from dfagent.registry.manifests import Descriptor, Platform
from dfagent.registry.reference import ImageReference, blob_url

__all__ = ["ImagePlan", "RegistryClient", "explain"]

_MAX_MANIFEST = 4 * 1024 * 1024
_MEANINGS = {
    401: "credentials missing or refused",
    403: "these credentials may not read it",
    404: "not found",
    429: "the registry is throttling us",
}


def explain(error: Exception) -> str:
    """An error as an operator wants to read it: what was asked, and what the answer means."""
    if isinstance(error, OriginHTTPError):
        what = error.body.decode("utf-8", "replace").strip()[:200] or "the registry"
        meaning = _MEANINGS.get(error.status, "an error")
        return f"{what}: the registry answered {error.status} ({meaning})"
    return str(error)


@dataclass(frozen=True, slots=True)
class ImagePlan:
    """What an image is made of for the chosen platforms."""

    image: ImageReference
    base: URL  # the registry's API root
    index: Digest | None  # the index the tag named, if it named one
    manifests: list[Descriptor]
    blobs: list[Descriptor]  # config and layers, each once, in manifest order

    def blob_url(self, digest: Digest) -> URL:
        return blob_url(self.base, self.image.repository, digest)


class RegistryClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        image: ImageReference,
        credentials: Credentials | None,
        *,
        plain_http: bool = False,
    ) -> None:
        self._session = session
        self.image = image
        self.base = URL(f"{'http' if plain_http else 'https'}://{image.api_host}")
        self._scope = f"repository:{image.repository}:pull"
        self._auth = RegistryAuth(session, credentials)
        self._challenge: str | None = None  # the registry's last WWW-Authenticate

    async def blob_authorization(self) -> str | None:
        """What to send with blob reads of this repository: None for a public one, else the
        current token (a fresh one once the last has expired)."""
        current = self._auth.current(self._scope)
        if current is None and self._challenge is not None:
            current = await self._auth.answer(self._challenge, self._scope)
        return current

    async def resolve(self, platforms: list[Platform] | None) -> ImagePlan:
        """The manifests for `platforms` (None: every platform the index lists) and their blobs."""
        body, media_type = await self.manifest(self.image.reference, self.image.digest)
        document = manifests.parse(body, media_type)
        index = None
        if manifests.is_index(document):
            index = Digest(hashlib.sha256(body).hexdigest())
            chosen = manifests.select(document, platforms)
            documents = []
            for descriptor in chosen:
                child, child_type = await self.manifest(str(descriptor.digest), descriptor.digest)
                if len(child) != descriptor.size:
                    raise OriginError(
                        f"manifest {descriptor.digest} is not {descriptor.size} bytes"
                    )
                documents.append(manifests.parse(child, child_type))
        else:
            digest = Digest(hashlib.sha256(body).hexdigest())
            chosen = [Descriptor(digest, len(body), document["mediaType"])]
            documents = [document]
        blobs: dict[Digest, Descriptor] = {}
        for document in documents:
            if manifests.is_index(document):
                raise manifests.BadManifest("an index inside an index is not supported")
            for blob in manifests.blobs_of(document):
                blobs.setdefault(blob.digest, blob)
        return ImagePlan(self.image, self.base, index, chosen, list(blobs.values()))

    async def manifest(self, reference: str, expected: Digest | None) -> tuple[bytes, str]:
        """The manifest's bytes and media type; checked against `expected` when pinned."""
        url = self.base.with_path(f"/v2/{self.image.repository}/manifests/{reference}")
        headers = {"Accept": manifests.ACCEPT}
        for attempt in range(2):
            authorization = self._auth.current(self._scope)
            send = headers | ({"Authorization": authorization} if authorization else {})
            try:
                async with self._session.get(url, headers=send, allow_redirects=False) as response:
                    body = await response.content.read(_MAX_MANIFEST + 1)
                    status, answer_headers = response.status, response.headers
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise OriginError(unreachable("registry", url, exc)) from exc
            if status == 401 and attempt == 0 and "WWW-Authenticate" in answer_headers:
                self._challenge = answer_headers["WWW-Authenticate"]
                await self._auth.answer(self._challenge, self._scope)
                continue
            break
        if status != 200:
            what = f"manifest {self.image.repository}:{reference}"
            raise OriginHTTPError(status, {}, what.encode())
        if len(body) > _MAX_MANIFEST:
            raise OriginError(f"manifest {reference} is larger than {_MAX_MANIFEST} bytes")
        if expected is not None and hashlib.sha256(body).hexdigest() != expected.hex:
            raise OriginError(f"manifest {reference} does not match its digest")
        return body, answer_headers.get("Content-Type", "")
