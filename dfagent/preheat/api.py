"""The preheat API: `POST /api/v1/preheat` starts a job, `GET /api/v1/preheat[/<id>]` reports.

Served on the health listener and on the control socket. Over the network only loopback
clients, or callers presenting the cluster token (`Authorization: Bearer ...`), may use it:
a preheat makes this agent fetch with the credentials in the request.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re

from aiohttp import web

from dfagent.errors import BadRequest
from dfagent.preheat.request import PreheatRequest
from dfagent.preheat.service import PreheatService

__all__ = ["PreheatApi"]

log = logging.getLogger(__name__)

_PREFIX = "/api/v1/preheat"
_PATH = re.compile(r"/api/v1/preheat(?:/(?P<id>[^/]+))?/?")
_MAX_BODY = 64 * 1024


class PreheatApi:
    def __init__(self, service: PreheatService, token: str | None) -> None:
        self._service = service
        self._token = f"Bearer {token}".encode() if token is not None else None

    async def over_network(self, request: web.BaseRequest) -> web.StreamResponse:
        if not self._allowed(request):
            return _error(401, "the preheat API needs a loopback client or the cluster token")
        return await self.handle(request)

    def _allowed(self, request: web.BaseRequest) -> bool:
        try:
            if ipaddress.ip_address(request.remote or "").is_loopback:
                return True
        except ValueError:
            pass
        given = request.headers.get("Authorization", "").encode()
        return self._token is not None and hmac.compare_digest(given, self._token)

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Serve a trusted request (the control socket, or one `over_network` let through)."""
        match = _PATH.fullmatch(request.path)
        if match is None:
            return _error(404, f"no such endpoint; try {_PREFIX}")
        job_id = match.group("id")
        if request.method == "POST" and not job_id:
            return await self._submit(request)
        if request.method not in ("GET", "HEAD"):
            return _error(405, f"{request.method} is not allowed here")
        if not job_id:
            return web.json_response({"jobs": [j.to_json() for j in self._service.jobs()]})
        job = self._service.job(job_id)
        if job is None:
            return _error(404, f"no preheat job {job_id}")
        return web.json_response(job.to_json())

    async def _submit(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            preheat = PreheatRequest.from_json(await _json_body(request))
        except BadRequest as exc:
            log.warning("preheat refused", extra={"error": str(exc)})
            return _error(400, str(exc))
        job = self._service.submit(preheat)
        return web.json_response(
            job.to_json(), status=202, headers={"Location": f"{_PREFIX}/{job.id}"}
        )


async def _json_body(request: web.BaseRequest) -> object:
    body = await request.content.read(_MAX_BODY + 1)
    if len(body) > _MAX_BODY:
        raise BadRequest(f"the body must be under {_MAX_BODY} bytes")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON: {exc}") from None


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
