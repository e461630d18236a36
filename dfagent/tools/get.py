"""`dfagent get`: download one blob through this node's agent, check it against its digest.

The blob is read through the running agent's proxy (registry-mirror form, so the cache and
the swarm serve it); with no agent running on the configured storage directory, an agent is
started inside this process for the download (same cache, same swarm). The file is written
as `FILE.part` and renamed once its sha256 matches; a `.part` left by an interrupted run is
resumed from where it stopped.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import aiofiles
import aiofiles.os
import aiohttp
from tqdm import tqdm
from yarl import URL

from dfagent.agent import Agent
from dfagent.config import Config
from dfagent.configtypes import ListenAddress
from dfagent.control import call_agent
from dfagent.core.digest import Digest, InvalidDigest
from dfagent.errors import DfagentError, OriginHTTPError
from dfagent.proxy.headers import ERROR_TYPE, REGISTRY
from dfagent.registry.auth import RegistryAuth
from dfagent.registry.credentials import Credentials
from dfagent.registry.reference import BadReference, blob_url, parse_image

__all__ = ["BlobTarget", "GetFailed", "check_output", "download", "parse_target", "part_of"]

EXIT_FAILED = 1
EXIT_DIGEST = 3
EXIT_REFUSED = 4
EXIT_NOT_FOUND = 5

_BLOB_PATH = re.compile(r"/v2/(?P<repository>.+)/blobs/(?P<digest>[^/]+)")
_UNSATISFIED = re.compile(r"bytes \*/(\d+)")
_CHUNK = 1024 * 1024
_LOOPBACK_ANY_PORT = ListenAddress("127.0.0.1", 0)


class GetFailed(DfagentError):
    """The download failed; `exit_code` says how (see the EXIT_ constants)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class BlobTarget:
    registry: URL  # scheme://host[:port]
    repository: str
    digest: Digest

    @property
    def registry_name(self) -> str:
        """`host[:port]`, as docker's config names registries."""
        port = self.registry.explicit_port
        return f"{self.registry.host}:{port}" if port else str(self.registry.host)

    @property
    def url(self) -> URL:
        return blob_url(self.registry, self.repository, self.digest)


def parse_target(text: str, *, plain_http: bool) -> BlobTarget:
    """`https://host/v2/REPO/blobs/DIGEST` or `REGISTRY/REPO@DIGEST`; ValueError if neither."""
    if "://" in text:
        url = URL(text)
        match = _BLOB_PATH.fullmatch(url.path)
        if url.scheme not in ("http", "https") or not url.host or match is None:
            raise ValueError(f"{text!r} is not a blob URL (http(s)://HOST/v2/REPO/blobs/DIGEST)")
        try:
            digest = Digest.parse(match.group("digest"))
        except InvalidDigest as exc:
            raise ValueError(str(exc)) from None
        return BlobTarget(url.with_path("/").with_query(None), match.group("repository"), digest)
    try:
        image = parse_image(text)
    except BadReference as exc:
        raise ValueError(str(exc)) from None
    if image.digest is None or image.tag is not None:
        raise ValueError(f"{text!r}: name a blob as REGISTRY/REPO@sha256:<hex>")
    scheme = "http" if plain_http else "https"
    return BlobTarget(URL(f"{scheme}://{image.api_host}"), image.repository, image.digest)


def check_output(output: Path) -> None:
    """ValueError (a usage error) unless `output` names a file in an existing directory."""
    if output.is_dir():
        raise ValueError(f"-O {output} is a directory: name the file to write in it")
    directory = output.parent
    if not directory.exists():
        raise ValueError(f"-O {output}: the directory {directory} does not exist")
    if not directory.is_dir():
        raise ValueError(f"-O {output}: {directory} is not a directory")


def part_of(output: Path) -> Path:
    """Where the download is written until its digest is checked."""
    return output.with_name(output.name + ".part")


async def download(
    config: Config,
    target: BlobTarget,
    output: Path,
    credentials: Credentials | None,
    *,
    progress: bool,
) -> str:
    """Fetch the blob into `output`; a line saying what happened. Raises GetFailed."""
    try:
        return await _download(config, target, output, credentials, progress=progress)
    except OSError as exc:  # the output file or its .part
        where = exc.filename or output
        raise GetFailed(f"cannot write {where}: {exc.strerror or exc}") from exc


async def _download(
    config: Config,
    target: BlobTarget,
    output: Path,
    credentials: Credentials | None,
    *,
    progress: bool,
) -> str:
    if await asyncio.to_thread(_sha256_if_exists, output) == target.digest.hex:
        return f"{output} already holds {target.digest}"
    part = part_of(output)
    async with AsyncExitStack() as stack:
        proxy = await _agent_proxy(config, stack)
        for _ in range(2):  # a resumed .part that turns out wrong is fetched again, once
            have, hasher = await asyncio.to_thread(_resume_state, part)
            digest = await _fetch(
                proxy, target, part, credentials, have=have, hasher=hasher, progress=progress
            )
            if digest == target.digest.hex:
                await aiofiles.os.replace(part, output)
                return f"{output}: {target.digest} verified"
            await aiofiles.os.remove(part)
            if not have:
                break
    raise GetFailed(f"the bytes do not match {target.digest} (sha256 {digest})", EXIT_DIGEST)


async def _agent_proxy(config: Config, stack: AsyncExitStack) -> URL:
    """The proxy of the agent running on this storage directory, else of one started here."""
    running = await call_agent(Path(config.storage.dir), "GET", "/agent")
    if running is not None and running["agent"] is not None:
        listen = ListenAddress.parse(running["agent"]["proxy"])
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listen.host, listen.host)
        return URL(f"http://{ListenAddress(host, listen.port)}")
    local = replace(
        config,
        proxy=replace(config.proxy, listen=_LOOPBACK_ANY_PORT),
        health=replace(config.health, listen=_LOOPBACK_ANY_PORT),
        metrics=replace(config.metrics, listen=_LOOPBACK_ANY_PORT),
    )
    agent = await stack.enter_async_context(Agent(local))
    assert agent.proxy is not None
    return URL(f"http://127.0.0.1:{agent.proxy.port}")


async def _fetch(
    proxy: URL,
    target: BlobTarget,
    part: Path,
    credentials: Credentials | None,
    *,
    have: int,
    hasher: hashlib._Hash,
    progress: bool,
) -> str:
    """Append the rest of the blob to `part` (which holds `have` bytes hashed into `hasher`);
    the sha256 of the whole file."""
    url = proxy.with_path(f"/v2/{target.repository}/blobs/{target.digest}")
    scope = f"repository:{target.repository}:pull"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300)
    async with aiohttp.ClientSession(timeout=timeout, trust_env=False) as session:
        auth = RegistryAuth(session, credentials)
        challenged = False
        while True:
            headers = {REGISTRY: str(target.registry).rstrip("/")}
            if have:
                headers["Range"] = f"bytes={have}-"
            if authorization := auth.current(scope):
                headers["Authorization"] = authorization
            try:
                async with session.get(url, headers=headers) as response:
                    challenge = response.headers.get("WWW-Authenticate")
                    if response.status == 401 and challenge and not challenged:
                        challenged = True
                        await auth.answer(challenge, scope)
                        continue
                    if response.status == 416 and have:
                        if _blob_size(response) == have:
                            return hasher.hexdigest()  # the .part was whole already
                        have, hasher = 0, hashlib.sha256()  # longer than the blob: start over
                        continue
                    await _check(response)
                    if response.status == 200 and have:  # the whole blob came: start over
                        have, hasher = 0, hashlib.sha256()
                    await _save(response, part, have, hasher, progress=progress, label=target)
                    return hasher.hexdigest()
            except OriginHTTPError as exc:
                reason = exc.body.decode("utf-8", "replace")
                message = f"{target.registry.host} answered {exc.status}: {reason}"
                raise _refusal(exc.status, message) from None
            except aiohttp.ClientError as exc:
                raise GetFailed(f"cannot download through the agent at {proxy}: {exc}") from exc


def _blob_size(response: aiohttp.ClientResponse) -> int | None:
    match = _UNSATISFIED.fullmatch(response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match is not None else None


async def _check(response: aiohttp.ClientResponse) -> None:
    if response.status in (200, 206):
        return
    reason = (await response.content.read(4096)).decode("utf-8", "replace").strip()
    where = response.headers.get(ERROR_TYPE, "origin")
    raise _refusal(response.status, f"{where} answered {response.status}: {reason}")


def _refusal(status: int, message: str) -> GetFailed:
    if status in (401, 403):
        return GetFailed(message, EXIT_REFUSED)
    if status == 404:
        return GetFailed(message, EXIT_NOT_FOUND)
    return GetFailed(message)


async def _save(
    response: aiohttp.ClientResponse,
    part: Path,
    have: int,
    hasher: hashlib._Hash,
    *,
    progress: bool,
    label: BlobTarget,
) -> None:
    total = have + (response.content_length or 0)
    bar = tqdm(
        total=total or None,
        initial=have,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=str(label.digest)[:19],
        disable=not progress,
        file=sys.stderr,
    )
    with bar:
        async with aiofiles.open(part, "ab" if have else "wb") as file:
            async for chunk in response.content.iter_chunked(_CHUNK):
                hasher.update(chunk)
                await file.write(chunk)
                bar.update(len(chunk))


def _resume_state(part: Path) -> tuple[int, hashlib._Hash]:
    """How many bytes a .part holds, and their running sha256."""
    hasher = hashlib.sha256()
    try:
        with part.open("rb") as file:
            while chunk := file.read(_CHUNK):
                hasher.update(chunk)
            return file.tell(), hasher
    except FileNotFoundError:
        return 0, hasher


def _sha256_if_exists(path: Path) -> str | None:
    have, hasher = _resume_state(path)
    return hasher.hexdigest() if have or path.exists() else None
