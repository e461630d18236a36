"""Registry credentials from flags or from a docker `config.json` (`auths` entries, or a
credential helper named by `credHelpers`/`credsStore`), the places `docker login` writes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from dfagent.registry.reference import DOCKER_HUB

__all__ = ["Credentials", "CredentialsError", "docker_config_path", "from_docker_config"]

_DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HELPER_TIMEOUT = 30


class CredentialsError(ValueError):
    """A docker config or credential helper that cannot be used (the message says which)."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """A user name and password, or (user name `<token>`) an identity token that the
    registry's token service trades for access tokens."""

    username: str
    password: str

    @property
    def identity_token(self) -> str | None:
        return self.password if self.username == "<token>" else None

    def basic(self) -> str:
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode()

    def __repr__(self) -> str:  # never print the secret
        return f"Credentials(username={self.username!r}, password=***)"


def docker_config_path() -> Path:
    directory = os.environ.get("DOCKER_CONFIG")
    return Path(directory) if directory else Path.home() / ".docker" / "config.json"


def from_docker_config(registry: str, path: Path | None = None) -> Credentials | None:
    """The credentials docker would use for `registry` (host[:port]); None when it has none."""
    registry = _host_of(registry)  # Docker Hub goes by several names
    path = path or docker_config_path()
    try:
        if path.is_dir():  # stat fails for a path the user may not look into
            path = path / "config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read docker config {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise CredentialsError(f"docker config {path} is not a JSON object")
    helpers, auths = _object(config, "credHelpers", path), _object(config, "auths", path)
    helper = helpers.get(registry) or config.get("credsStore")
    if helper:
        return _from_helper(str(helper), registry)
    for key, entry in auths.items():
        if _host_of(key) == registry and isinstance(entry, dict):
            return _from_entry(entry, path, key)
    return None


def _object(config: dict[str, object], key: str, path: Path) -> dict[str, object]:
    """`config[key]`, a JSON object when present (null and absent read as empty)."""
    value = config.get(key) or {}
    if not isinstance(value, dict):
        raise CredentialsError(f"docker config {path}: {key} must be a JSON object")
    return value


def _host_of(key: str) -> str:
    """`auths` keys are written as a host, a URL, or Docker Hub's legacy index URL."""
    if key == _DOCKER_HUB_KEY or key in ("index.docker.io", "registry-1.docker.io"):
        return DOCKER_HUB
    return key.split("://", 1)[-1].split("/", 1)[0]


def _from_entry(entry: dict[str, object], path: Path, key: str) -> Credentials | None:
    token = entry.get("identitytoken")
    if isinstance(token, str) and token:
        return Credentials("<token>", token)
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        try:
            username, _, password = base64.b64decode(encoded).decode().partition(":")
        except (ValueError, UnicodeDecodeError) as exc:
            raise CredentialsError(
                f"{path}: auths[{key!r}].auth is not base64 of user:password"
            ) from exc
        return Credentials(username, password)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str):
        return Credentials(username, password)
    return None


def _from_helper(helper: str, registry: str) -> Credentials | None:
    program = shutil.which(f"docker-credential-{helper}")
    if program is None:
        raise CredentialsError(f"docker credential helper docker-credential-{helper} not found")
    server = _DOCKER_HUB_KEY if registry == DOCKER_HUB else registry
    try:
        result = subprocess.run(
            [program, "get"],
            input=server,
            capture_output=True,
            text=True,
            timeout=_HELPER_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CredentialsError(f"docker-credential-{helper}: {exc}") from exc
    if result.returncode != 0:
        if "credentials not found" in result.stdout + result.stderr:
            return None
        raise CredentialsError(f"docker-credential-{helper}: {result.stderr.strip()}")
    try:
        answer = json.loads(result.stdout)
        return Credentials(str(answer["Username"]), str(answer["Secret"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise CredentialsError(f"docker-credential-{helper} answered {exc}") from exc
