"""Registry authorization: answer a `WWW-Authenticate` challenge with Basic credentials or a
bearer token from the registry's token service, and remember tokens per scope until they
expire (the distribution token-auth flow every public registry speaks)."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import aiohttp
from yarl import URL

from dfagent.errors import OriginError, OriginHTTPError
from dfagent.registry.credentials import Credentials

__all__ = ["Challenge", "RegistryAuth", "parse_challenge"]

_PARAM = re.compile(r'\s*([A-Za-z0-9_-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?')
_DEFAULT_TOKEN_SECONDS = 60  # the spec's default when the service omits expires_in
_EARLY = 10  # refresh a token this long before it expires
_MAX_TOKEN_BODY = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str  # lower case: "bearer" or "basic"
    params: dict[str, str]


def parse_challenge(header: str) -> Challenge | None:
    """`Bearer realm="...",service="...",scope="..."` -> Challenge; None when unusable."""
    scheme, _, rest = header.strip().partition(" ")
    if not scheme:
        return None
    params = {}
    position = 0
    while position < len(rest):
        match = _PARAM.match(rest, position)
        if match is None or match.end() == position:
            break
        quoted, bare = match.group(2), match.group(3)
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        params[match.group(1).lower()] = value
        position = match.end()
    return Challenge(scheme.lower(), params)


class RegistryAuth:
    """The `Authorization` to send to one registry for one scope (`repository:NAME:pull`)."""

    def __init__(self, session: aiohttp.ClientSession, credentials: Credentials | None) -> None:
        self._session = session
        self._credentials = credentials
        self._basic = False  # the registry asked for Basic credentials
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (header, expiry)

    def current(self, scope: str) -> str | None:
        """What to send first: a live token for the scope, Basic when the registry wants it,
        else nothing (the registry may be public)."""
        if self._basic and self._credentials is not None:
            return self._credentials.basic()
        token = self._tokens.get(scope)
        if token is not None and token[1] > time.monotonic():
            return token[0]
        return None

    async def answer(self, challenge_header: str, scope: str) -> str:
        """The `Authorization` that answers the registry's 401 for `scope`.

        Raises OriginHTTPError(401) when no credentials can answer it.
        """
        challenge = parse_challenge(challenge_header)
        if challenge is not None and challenge.scheme == "basic":
            if self._credentials is None:
                raise _refused("the registry wants a user name and password")
            self._basic = True
            return self._credentials.basic()
        if challenge is None or challenge.scheme != "bearer" or "realm" not in challenge.params:
            raise _refused(f"unsupported authentication challenge {challenge_header!r}")
        header, expires_in = await self._token(challenge.params, scope)
        self._tokens[scope] = (header, time.monotonic() + max(expires_in - _EARLY, 1))
        return header

    async def _token(self, params: dict[str, str], scope: str) -> tuple[str, int]:
        realm = URL(params["realm"])
        if realm.scheme not in ("http", "https") or not realm.host:
            raise OriginError(f"token realm {params['realm']!r} is not an http(s) URL")
        query = {"scope": scope} | ({"service": params["service"]} if "service" in params else {})
        credentials = self._credentials
        try:
            if credentials is not None and credentials.identity_token is not None:
                form = query | {
                    "grant_type": "refresh_token",
                    "refresh_token": credentials.identity_token,
                    "client_id": "dfagent",
                }
                request = self._session.post(realm, data=form, allow_redirects=False)
            else:
                headers = {"Authorization": credentials.basic()} if credentials else {}
                request = self._session.get(realm, params=query, headers=headers)
            async with request as response:
                body = await response.content.read(_MAX_TOKEN_BODY)
                if response.status in (401, 403):
                    raise _refused(f"the token service refused these credentials for {scope}")
                if response.status != 200:
                    raise OriginError(f"token service {realm.host} answered {response.status}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OriginError(f"cannot reach token service {realm.host}: {exc}") from exc
        try:
            answer = json.loads(body)
        except ValueError as exc:
            raise OriginError(f"token service {realm.host} sent no JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise OriginError(f"token service {realm.host} sent no token")
        token = answer.get("token") or answer.get("access_token")
        if not isinstance(token, str) or not token:
            raise OriginError(f"token service {realm.host} sent no token")
        expires_in = answer.get("expires_in")
        seconds = expires_in if isinstance(expires_in, int) and expires_in > 0 else None
        return f"Bearer {token}", seconds or _DEFAULT_TOKEN_SECONDS


def _refused(reason: str) -> OriginHTTPError:
    return OriginHTTPError(401, {}, reason.encode())
