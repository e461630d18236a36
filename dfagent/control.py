"""The agent's control socket: `dfagent status|gc|verify|preheat` talk to a running agent
through a unix socket in its data directory (root-only by its permissions, never on the
network). Paths under `/api/` are the operator API, as on the health listener."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from dfagent.errors import DfagentError
from dfagent.maintenance import Maintenance
from dfagent.serving import drain

__all__ = [
    "SOCKET_NAME",
    "AgentLost",
    "AgentNotPermitted",
    "AgentRefused",
    "ControlServer",
    "call_agent",
]

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class AgentRefused(DfagentError):
    """The running agent answered with an error (the message is its reason)."""


class AgentLost(DfagentError):
    """The agent took the request but gave no usable answer: it stopped (or was killed)
    while answering, or something else holds its socket."""


class AgentNotPermitted(DfagentError):
    """This user may not reach the agent: its cache directory and socket are owner-only."""


SOCKET_NAME = "dfagent.sock"


class ControlServer:
    def __init__(self, directory: Path, maintenance: Maintenance, *, api: Handler) -> None:
        self.path = directory / SOCKET_NAME
        self._maintenance = maintenance
        self._api = api
        self._server: asyncio.Server | None = None
        self._http: web.Server | None = None

    async def start(self) -> None:
        routes: dict[tuple[str, str], Callable[[web.BaseRequest], Awaitable[dict[str, Any]]]] = {
            ("GET", "/status"): lambda _: self._maintenance.status(),
            ("GET", "/agent"): lambda _: self._maintenance.agent(),
            ("POST", "/gc"): lambda _: self._maintenance.gc(),
            ("POST", "/verify"): lambda r: self._maintenance.verify(
                repair=r.query.get("repair") == "1"
            ),
        }

        async def dispatch(request: web.BaseRequest) -> web.StreamResponse:
            if request.path.startswith("/api/"):
                return await self._api(request)
            action = routes.get((request.method, request.path))
            if action is None:
                return web.json_response({"error": "not found"}, status=404)
            return web.json_response(await action(request))

        self._http = web.Server(dispatch, access_log=None)
        # We hold the data directory's lock, so a socket file left here is stale.
        self.path.unlink(missing_ok=True)
        self._server = await asyncio.get_running_loop().create_unix_server(
            self._http, str(self.path)
        )
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        await drain(self._server, self._http, 1.0)
        self.path.unlink(missing_ok=True)


async def call_agent(
    directory: Path, method: str, path: str, body: Any = None
) -> dict[str, Any] | None:
    """Ask the agent running on `directory`; None when no agent answers there. Raises
    AgentRefused with the agent's reason when it answers with an error, AgentLost when the
    connection breaks before a JSON answer."""
    socket = directory / SOCKET_NAME
    try:
        if not socket.exists():
            return None
    except PermissionError:
        raise AgentNotPermitted(
            f"{directory} is owner-only: run this as the agent's user (or root)"
        ) from None
    connector = aiohttp.UnixConnector(path=str(socket))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5)
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.request(method, f"http://dfagent{path}", json=body) as response,
        ):
            status, raw = response.status, await response.read()
    except aiohttp.ClientConnectorError:
        return None
    except aiohttp.ClientError as exc:  # it closed the connection: killed, or stopping
        reason = str(exc) or type(exc).__name__
        raise AgentLost(
            f"the agent on {directory} stopped answering ({reason}): is it still running?"
        ) from None
    answer = _json_object(raw, socket)
    if status >= 400:
        raise AgentRefused(answer.get("error") or f"the agent answered {status}")
    return answer


def _json_object(raw: bytes, socket: Path) -> dict[str, Any]:
    """The agent's answer; AgentLost when it is not JSON (another program holds the socket)."""
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        raise AgentLost(f"the answer on {socket} is not the agent's: {exc}") from None
    if not isinstance(answer, dict):
        raise AgentLost(f"the answer on {socket} is not the agent's: not a JSON object")
    return answer
