"""The preheat API: `POST /api/v1/preheat` starts a job, `GET /api/v1/preheat[/<id>]` reports.

Served on the health listener and on the control socket. Over the network only loopback
clients, or callers presenting the cluster token (`Authorization: Bearer ...`), may start a
job: a preheat makes this agent fetch with the credentials in the request. Reading is
narrower, because every local user reaches loopback and a job names the digests of a
(perhaps private) image: the job list, and any job, need the control socket (owner-only) or
the cluster token; a loopback client sees only the jobs it started, by the key the answer
that started each one gave it.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import secrets

from aiohttp import web

from dfagent.errors import BadRequest
from dfagent.preheat.request import PreheatRequest
from dfagent.preheat.service import PreheatService, TooManyJobs

__all__ = ["PreheatApi"]

log = logging.getLogger(__name__)

_PREFIX = "/api/v1/preheat"
_PATH = re.compile(r"/api/v1/preheat(?:/(?P<id>[^/]+))?/?")
_MAX_BODY = 64 * 1024


class PreheatApi:
    def __init__(self, service: PreheatService, token: str | None) -> None:
        self._service = service
        self._token = f"Bearer {token}".encode() if token is not None else None
        self._job_keys = secrets.token_bytes(32)  # signs the keys loopback clients follow

    async def over_network(self, request: web.BaseRequest) -> web.StreamResponse:
        # aiohttp decodes header bytes that are not UTF-8 to surrogates: get the bytes back.
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if self._token is not None and hmac.compare_digest(given, self._token):
            return await self.handle(request)
        if not _from_loopback(request):
            return _error(401, "the preheat API needs a loopback client or the cluster token")
        return await self._serve(request, every_job=False)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve a caller trusted with every job: the control socket, or the cluster token."""
        return await self._serve(request, every_job=True)

    async def _serve(self, request: web.BaseRequest, *, every_job: bool) -> web.StreamResponse:
        match = _PATH.fullmatch(request.path)
        if match is None:
            return _error(404, f"no such endpoint; try {_PREFIX}")
        job_id = match.group("id")
        if request.method == "POST" and not job_id:
            return await self._submit(request, keyed=not every_job)
        if request.method not in ("GET", "HEAD"):
            return _error(405, f"{request.method} is not allowed here")
        if not job_id:
            if not every_job:
                return _error(401, "the job list needs the cluster token or the control socket")
            return web.json_response({"jobs": [j.to_json() for j in self._service.jobs()]})
        if not every_job:
            given = request.query.get("key")
            if given is None:
                return _error(401, f"job {job_id} needs its key, the cluster token or the socket")
            if not hmac.compare_digest(given.encode(), self._key(job_id).encode()):
                log.warning("preheat job read with a wrong key", extra={"job": job_id})
                return _error(403, f"that is not the key of job {job_id}")
        job = self._service.job(job_id)
        if job is None:
            return _error(404, f"no preheat job {job_id}")
        return web.json_response(job.to_json())

    async def _submit(self, request: web.BaseRequest, *, keyed: bool) -> web.StreamResponse:
        """Start a job; with `keyed`, the answer carries the key that reads the job back."""
        try:
            preheat = PreheatRequest.from_json(await _json_body(request))
        except BadRequest as exc:
            log.warning("preheat refused", extra={"error": str(exc)})
            return _error(400, str(exc))
        try:
            job = self._service.submit(preheat)
        except TooManyJobs as exc:
            log.warning("preheat refused", extra={"error": str(exc)})
            return _error(429, str(exc))
        answer, location = job.to_json(), f"{_PREFIX}/{job.id}"
        if keyed:
            answer["key"] = self._key(job.id)
            location += f"?key={answer['key']}"
        return web.json_response(answer, status=202, headers={"Location": location})

    def _key(self, job_id: str) -> str:
        """The key that reads job `job_id` back: only whoever started the job was given it."""
        return hmac.new(self._job_keys, job_id.encode(), "sha256").hexdigest()[:32]


def _from_loopback(request: web.BaseRequest) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


async def _json_body(request: web.BaseRequest) -> object:
    body = bytearray()
    while chunk := await request.content.read(_MAX_BODY + 1 - len(body)):  # what has arrived
        body += chunk
        if len(body) > _MAX_BODY:
            raise BadRequest(f"the body must be under {_MAX_BODY} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
