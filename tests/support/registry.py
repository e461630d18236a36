"""The real CNCF distribution registry (Debian `docker-registry`) on loopback, for tests."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.ports import free_port
from tests.support.tokens import TokenService
from tests.support.tools import require

REGISTRY_BINARY = "docker-registry"


def make_htpasswd(user: str, password: str) -> str:
    htpasswd = require("htpasswd")
    result = subprocess.run(
        [htpasswd, "-Bbn", user, password], check=True, capture_output=True, text=True
    )
    return result.stdout


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@dataclass
class Registry:
    """A running registry; `url` is `http(s)://127.0.0.1:port`."""

    root: Path
    htpasswd: Path | None = None
    tls: tuple[Path, Path] | None = None  # (certificate chain, key)
    port: int = field(default_factory=free_port)
    address: str = "127.0.0.1"
    command_prefix: list[str] = field(default_factory=list)  # e.g. ip netns exec NAME
    process: subprocess.Popen[bytes] | None = None
    auth_header: str | None = None  # sent by the helpers below when the registry needs auth
    tokens: TokenService | None = None  # bearer-token auth through this token service

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def host(self) -> str:
        return f"{self.address}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def start(self) -> Registry:
        binary = require(REGISTRY_BINARY)
        self.root.mkdir(parents=True, exist_ok=True)
        config: dict[str, object] = {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
            },
            "http": {"addr": self.host},
        }
        if self.htpasswd is not None:
            config["auth"] = {"htpasswd": {"realm": "dfagent-test", "path": str(self.htpasswd)}}
        if self.tokens is not None:
            config["auth"] = self.tokens.registry_auth()
        if self.tls is not None:
            config["http"] = {
                "addr": self.host,
                "tls": {"certificate": str(self.tls[0]), "key": str(self.tls[1])},
            }
        config_path = self.root / "config.yml"
        config_path.write_text(yaml.safe_dump(config))
        log = (self.root / "registry.log").open("wb")
        self.process = subprocess.Popen(
            [*self.command_prefix, binary, "serve", str(config_path)], stdout=log, stderr=log
        )
        self._wait_up()
        return self

    def _wait_up(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError((self.root / "registry.log").read_text())
            try:
                with _open(self, "GET", "/v2/"):
                    return
            except urllib.error.HTTPError:
                return  # 401 from an auth registry still means it is up
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload `data` as a blob of `repo` (monolithic upload); returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with _open(self, "POST", f"/v2/{repo}/blobs/uploads/") as response:
            location = response.headers["Location"]
        separator = "&" if "?" in location else "?"
        with _open(self, "PUT", f"{location}{separator}digest={digest}", data) as response:
            assert response.status == 201, response.status
        return digest

    def push_manifest(
        self,
        repo: str,
        tag: str | None,
        config: bytes,
        layers: list[bytes],
        *,
        docker: bool = False,
        annotations: list[dict[str, str] | None] | None = None,
    ) -> bytes:
        """Push an image manifest (blobs first) under `tag`, or by digest alone for None;
        OCI media types, or Docker's with `docker`. Returns the manifest bytes."""
        kinds = _DOCKER if docker else _OCI
        described = []
        for i, layer in enumerate(layers):
            entry: dict[str, object] = {
                "mediaType": kinds["layer"],
                "digest": self.push_blob(repo, layer),
                "size": len(layer),
            }
            if annotations and annotations[i]:
                entry["annotations"] = annotations[i]
            described.append(entry)
        manifest = {
            "schemaVersion": 2,
            "mediaType": kinds["manifest"],
            "config": {
                "mediaType": kinds["config"],
                "digest": self.push_blob(repo, config),
                "size": len(config),
            },
            "layers": described,
        }
        body = json.dumps(manifest).encode()
        self._put_manifest(repo, tag, body, kinds["manifest"])
        return body

    def push_index(
        self, repo: str, tag: str, manifests: dict[str, bytes], *, docker: bool = False
    ) -> bytes:
        """Push an index (Docker: a manifest list) of already pushed manifests, keyed by
        platform `os/arch[/variant]`. Returns the index bytes."""
        kinds = _DOCKER if docker else _OCI
        entries = []
        for platform, manifest in manifests.items():
            os_name, arch, *variant = platform.split("/")
            described = {"os": os_name, "architecture": arch}
            if variant:
                described["variant"] = variant[0]
            entries.append(
                {
                    "mediaType": kinds["manifest"],
                    "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
                    "size": len(manifest),
                    "platform": described,
                }
            )
        index = {"schemaVersion": 2, "mediaType": kinds["index"], "manifests": entries}
        body = json.dumps(index).encode()
        self._put_manifest(repo, tag, body, kinds["index"])
        return body

    def _put_manifest(self, repo: str, tag: str | None, body: bytes, media_type: str) -> None:
        reference = tag or "sha256:" + hashlib.sha256(body).hexdigest()
        headers = {"Content-Type": media_type}
        with _open(self, "PUT", f"/v2/{repo}/manifests/{reference}", body, headers) as response:
            assert response.status == 201, response.status


_OCI = {
    "index": "application/vnd.oci.image.index.v1+json",
    "manifest": "application/vnd.oci.image.manifest.v1+json",
    "config": "application/vnd.oci.image.config.v1+json",
    "layer": "application/vnd.oci.image.layer.v1.tar",
}
_DOCKER = {
    "index": "application/vnd.docker.distribution.manifest.list.v2+json",
    "manifest": "application/vnd.docker.distribution.manifest.v2+json",
    "config": "application/vnd.docker.container.image.v1+json",
    "layer": "application/vnd.docker.image.rootfs.diff.tar.gzip",
}


def _open(
    registry: Registry,
    method: str,
    path_or_url: str,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> urllib.response.addinfourl:
    url = path_or_url if "://" in path_or_url else registry.url + path_or_url
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and not request.has_header("Content-type"):
        request.add_header("Content-Type", "application/octet-stream")
    if registry.auth_header:
        request.add_header("Authorization", registry.auth_header)
    repo = re.match(r"/v2/(.+?)/(?:blobs|manifests)/", urllib.parse.urlparse(url).path)
    if registry.tokens is not None and repo is not None:
        request.add_header("Authorization", registry.tokens.header_for(repo.group(1)))
    context = None
    if registry.tls is not None:
        import ssl

        context = ssl.create_default_context(cafile=str(registry.root / "ca.pem"))
    # a socket's timeout bounds a whole sendall: give a big body time at 1 MB/s (a bench
    # pushes through links capped at 100 Mbit/s)
    timeout = 30 + len(data or b"") / 1e6
    return urllib.request.urlopen(request, timeout=timeout, context=context)
