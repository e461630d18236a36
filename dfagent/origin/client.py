"""The client for origin registries: ranged blob reads, HEAD, and streaming pass-through.

One pooled aiohttp session. Nothing the origin says is trusted blindly: a ranged read must
come back 206 with exactly the asked-for `Content-Range` (or 200 from offset 0), with no
content encoding. Blob reads follow redirects here (never sending the client's
`Authorization` to another host) and remember the target, so later pieces skip the registry
round trip. A target (often a signed storage URL that serves anyone) is remembered per
registry, blob path and credentials: it is reused only for the same credentials at the same
registry and repository, whose own request to the registry produced it; and never for a HEAD,
which is how a client's access is checked. Connection errors and 5xx are retried with
jittered backoff.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from yarl import URL

from dfagent.core.digest import Digest
from dfagent.core.limits import MAX_BLOB_BYTES, PaceWatch
from dfagent.errors import (
    OriginError,
    OriginHTTPError,
    OriginSizeMismatch,
    OriginTimeout,
    RangeNotSatisfiable,
    StartupError,
)
from dfagent.metrics import Metrics
from dfagent.origin.config import OriginConfig
from dfagent.origin.unreachable import unreachable

__all__ = ["BlobSource", "OriginClient", "RangeBody"]

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_MAX_REDIRECTS = 5
_MAX_REMEMBERED_REDIRECTS = 4096
_MAX_ERROR_BODY = 64 * 1024
_BACKOFF_BASE = 0.1
_BACKOFF_CAP = 2.0
# A body that brings less than this in a whole origin.read_timeout is trickling (PaceWatch).
_MIN_BYTES_PER_READ_TIMEOUT = 64 * 1024
# Methods a pass-through may send again after a connection error or a 502/503/504: sending a
# POST (an upload session) twice is not the same as once.
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
USER_AGENT = "dfagent"


@dataclass(frozen=True, slots=True)
class BlobSource:
    """Where a blob can be read at the origin, with the credentials the client sent."""

    url: URL
    digest: Digest
    authorization: str | None = None

    @property
    def origin(self) -> str:
        """`scheme://host:port` of the registry: whose word the bytes are until verified."""
        return f"{self.url.scheme}://{self.url.host}:{self.url.port}"


@dataclass(slots=True)
class RangeBody:
    """An open ranged response: bytes `first..last` of a blob of `total` bytes."""

    first: int
    last: int
    total: int
    _response: aiohttp.ClientResponse
    _read_timeout: float

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, exactly `last - first + 1` bytes, or OriginError if it ends short or
        trickles (see _MIN_BYTES_PER_READ_TIMEOUT)."""
        remaining = self.last - self.first + 1
        pace = PaceWatch(self._read_timeout, _MIN_BYTES_PER_READ_TIMEOUT)
        try:
            async for received in self._response.content.iter_any():
                # A 200 from offset 0 carries more than we asked for.
                chunk = received[:remaining] if len(received) > remaining else received
                remaining -= len(chunk)
                yield chunk
                if remaining == 0:
                    return
                pace.arrived(len(chunk))
        except TimeoutError as exc:
            raise OriginTimeout(f"origin stalled while sending a blob: {exc}") from exc
        except aiohttp.ClientError as exc:
            raise OriginError(f"origin connection failed mid-body: {exc}") from exc
        raise OriginError(f"origin body ended {remaining} bytes short")


@dataclass(slots=True)
class _Redirect:
    url: URL
    expires: float


def _plausible(size: int) -> int:
    if size > MAX_BLOB_BYTES:
        raise OriginError(f"origin claims a blob of {size} bytes")
    return size


def _same_origin(a: URL, b: URL) -> bool:
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)


class OriginClient:
    def __init__(self, config: OriginConfig, metrics: Metrics) -> None:
        self._config = config
        self._metrics = metrics
        self._session: aiohttp.ClientSession | None = None
        self._redirects: dict[tuple[str, str], _Redirect] = {}

    async def __aenter__(self) -> OriginClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=self._config.max_connections,
                ttl_dns_cache=60,
                enable_cleanup_closed=True,
                ssl=self._tls_context(),
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                sock_connect=self._config.connect_timeout,
                sock_read=self._config.read_timeout,
            ),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            read_bufsize=256 * 1024,  # fewer, larger chunks per piece
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self._config.ca_file is not None:
            try:
                context.load_verify_locations(cafile=self._config.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise StartupError(
                    f"origin.ca_file: cannot load {self._config.ca_file}: {exc}"
                ) from exc
        if self._config.insecure_skip_verify:
            log.warning("origin.insecure_skip_verify: origin certificates are NOT verified")
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    @property
    def connect_timeout(self) -> float:
        return self._config.connect_timeout

    @property
    def retries(self) -> int:
        return self._config.retries

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "origin client is not open"
        return self._session

    # pass-through ----------------------------------------------------------------------------

    @asynccontextmanager
    async def forward(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send a request upstream unchanged and yield the response, unread.

        GET, HEAD and OPTIONS are retried on connection errors and 502/503/504.
        """
        attempt = 0
        retries = self._config.retries if body is None and method in _SAFE_METHODS else 0
        while True:
            try:
                response = await self.session.request(
                    method, url, headers=headers, data=body, allow_redirects=False
                )
            except TimeoutError as exc:
                self._metrics.origin_requests.labels("passthrough", "error").inc()
                if attempt >= retries:
                    raise OriginTimeout(f"origin timed out: {url.host}") from exc
            except aiohttp.ClientError as exc:
                self._metrics.origin_requests.labels("passthrough", "error").inc()
                if attempt >= retries:
                    raise OriginError(unreachable("origin", url, exc)) from exc
            else:
                outcome = str(response.status // 100) + "xx"
                self._metrics.origin_requests.labels("passthrough", outcome).inc()
                if response.status not in (502, 503, 504) or attempt >= retries:
                    try:
                        yield response
                    finally:
                        response.release()
                    return
                response.release()
            attempt += 1
            await self._backoff(attempt)

    # blob reads ----------------------------------------------------------------------------

    async def blob_size(self, source: BlobSource, expected: int | None = None) -> int:
        """The blob's size from a HEAD (following redirects). `expected`: the size the blob
        was recorded with; an answer of another size (a login page a redirect led to, say)
        is no answer for this blob. An answer naming another digest is refused too."""
        async with self._request(source, "HEAD", None, purpose="head") as response:
            length = response.headers.get("Content-Length")
            if response.status != 200 or length is None or not length.isdigit():
                raise OriginError(f"origin HEAD gave {response.status} without a Content-Length")
            named = response.headers.get("Docker-Content-Digest")
            if named is not None and named != str(source.digest):
                raise OriginError(f"origin answered a HEAD of {source.digest} for {named}")
            size = _plausible(int(length))
            if expected is not None and size != expected:
                raise OriginSizeMismatch(
                    f"origin HEAD says {source.digest} has {size} bytes; it has {expected}"
                )
            return size

    @asynccontextmanager
    async def open_range(
        self, source: BlobSource, first: int, last: int, size: int | None = None
    ) -> AsyncIterator[RangeBody]:
        """Open bytes `first..last` (clipped to the blob's end) for reading. `size`: the
        size the blob was recorded with, if any (OriginSizeMismatch when the origin gives
        another).

        Raises RangeNotSatisfiable (with the size) when `first` lies past the end.
        """
        headers = {"Range": f"bytes={first}-{last}"}
        async with self._request(source, "GET", headers, purpose="range") as response:
            body = self._validate_range(response, first, last)
            if size is not None and body.total != size:
                raise OriginSizeMismatch(
                    f"origin says {source.digest} has {body.total} bytes; it has {size}"
                )
            yield body

    def _validate_range(self, response: aiohttp.ClientResponse, first: int, last: int) -> RangeBody:
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding != "identity":
            raise OriginError(f"origin sent a blob with Content-Encoding {encoding}")
        timeout = self._config.read_timeout
        if response.status == 206:
            match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
            if match is None or match.group(3) == "*":
                raise OriginError("origin answered 206 without a usable Content-Range")
            got_first, got_last, total = (int(g) for g in match.groups())
            total = _plausible(total)
            if got_first != first or got_last != min(last, total - 1) or got_first > got_last:
                sent = f"{got_first}-{got_last}/{total}"
                raise OriginError(f"origin sent bytes {sent} for a request of {first}-{last}")
            return RangeBody(got_first, got_last, total, response, timeout)
        if response.status == 200 and first == 0:
            length = response.headers.get("Content-Length")
            if length is None or not length.isdigit():
                raise OriginError("origin ignored Range and sent no Content-Length")
            total = _plausible(int(length))
            return RangeBody(0, min(last, total - 1), total, response, timeout)
        if response.status == 200:
            raise OriginError("origin ignored the Range header")
        raise OriginError(f"origin answered {response.status} to a ranged read")

    @asynccontextmanager
    async def _request(
        self, source: BlobSource, method: str, headers: Mapping[str, str] | None, *, purpose: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        attempt = 0
        remembered = _redirect_key(source)
        while True:
            # An access check (HEAD) always asks the registry itself.
            redirect = self._redirects.get(remembered) if method != "HEAD" else None
            if redirect is not None and redirect.expires < time.monotonic():
                self._redirects.pop(remembered, None)
                redirect = None
            try:
                response = await self._follow(source, method, headers, redirect)
            except (aiohttp.ClientError, TimeoutError, OriginError) as exc:
                self._metrics.origin_requests.labels(purpose, "error").inc()
                if redirect is not None:  # the remembered target failed: ask the registry again
                    self._redirects.pop(remembered, None)
                    continue
                if attempt >= self._config.retries:
                    if isinstance(exc, OriginError):
                        raise
                    if isinstance(exc, TimeoutError):
                        raise OriginTimeout(f"origin timed out: {source.url.host}") from exc
                    raise OriginError(unreachable("origin", source.url, exc)) from exc
                attempt += 1
                await self._backoff(attempt)
                continue
            status = response.status
            if status < 400 or status == 416:
                self._metrics.origin_requests.labels(purpose, "ok").inc()
                if status == 416:
                    response.release()
                    raise self._unsatisfiable(response)
                try:
                    yield response
                finally:
                    response.release()
                return
            body = await self._error_body(response)
            self._metrics.origin_requests.labels(purpose, str(status // 100) + "xx").inc()
            if redirect is not None:  # e.g. 403 from an expired signed URL
                self._redirects.pop(remembered, None)
                continue
            if status >= 500 and attempt < self._config.retries:
                attempt += 1
                await self._backoff(attempt)
                continue
            if not _same_origin(response.url, source.url):
                # The storage a redirect led to refused: its challenge (a token realm of its
                # own) is not the registry's, and the client must not answer it.
                raise OriginError(f"the blob's storage at {response.url.host} answered {status}")
            raise OriginHTTPError(status, _error_headers(response), body)

    async def _follow(
        self,
        source: BlobSource,
        method: str,
        headers: Mapping[str, str] | None,
        redirect: _Redirect | None,
    ) -> aiohttp.ClientResponse:
        url = redirect.url if redirect is not None else source.url
        for _ in range(_MAX_REDIRECTS + 1):
            # identity: with no Accept-Encoding at all, a proxy on the way may compress.
            send = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})}
            if source.authorization and _same_origin(url, source.url):
                send["Authorization"] = source.authorization
            response = await self.session.request(method, url, headers=send, allow_redirects=False)
            location = response.headers.get("Location")
            if response.status not in (301, 302, 303, 307, 308) or location is None:
                return response
            response.release()
            url = url.join(URL(location))
            if method == "GET":  # storage signs a target for one method
                self._remember(_redirect_key(source), url)
            log.debug("blob redirected", extra={"digest": str(source.digest), "host": url.host})
        raise OriginError(f"more than {_MAX_REDIRECTS} redirects for {source.digest}")

    def _remember(self, key: tuple[str, str], url: URL) -> None:
        self._redirects.pop(key, None)  # re-insert: the dict stays oldest first
        self._redirects[key] = _Redirect(url, time.monotonic() + self._config.redirect_ttl)
        while len(self._redirects) > _MAX_REMEMBERED_REDIRECTS:
            del self._redirects[next(iter(self._redirects))]

    @staticmethod
    def _unsatisfiable(response: aiohttp.ClientResponse) -> Exception:
        match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", ""))
        if match is None:
            return OriginError("origin answered 416 without the blob size")
        try:
            return RangeNotSatisfiable(_plausible(int(match.group(1))))
        except OriginError as exc:
            return exc

    @staticmethod
    async def _error_body(response: aiohttp.ClientResponse) -> bytes:
        try:
            return await response.content.read(_MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            return b""
        finally:
            response.release()

    async def _backoff(self, attempt: int) -> None:
        delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2 ** (attempt - 1))
        await asyncio.sleep(delay * random.uniform(0.5, 1.5))


def _redirect_key(source: BlobSource) -> tuple[str, str]:
    """(registry + blob path, credentials hash): whose request a redirect target answered."""
    who = source.authorization or ""
    return f"{source.origin}{source.url.path}", hashlib.sha256(who.encode()).hexdigest()


_PASSED_ERROR_HEADERS = ("WWW-Authenticate", "Content-Type", "Docker-Distribution-API-Version")


def _error_headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    return {k: v for k in _PASSED_ERROR_HEADERS if (v := response.headers.get(k)) is not None}
