"""The real CNCF distribution registry (Debian `docker-registry`) on loopback, for tests."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.support.ports import free_port

REGISTRY_BINARY = "docker-registry"


def ensure_installed(binary: str, package: str) -> str:
    """The path of `binary`, installing its Debian package first when it is missing."""
    path = shutil.which(binary)
    if path is None:
        install = ["apt-get", "install", "-y", "-q", package]
        if subprocess.run(install, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], check=True)
            subprocess.run(install, check=True)
        path = shutil.which(binary)
    assert path is not None, f"{binary} is not installed"
    return path


def make_htpasswd(user: str, password: str) -> str:
    htpasswd = ensure_installed("htpasswd", "apache2-utils")
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
        binary = ensure_installed(REGISTRY_BINARY, "docker-registry")
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

    def push_manifest(self, repo: str, tag: str, config: bytes, layers: list[bytes]) -> bytes:
        """Push an OCI image manifest (blobs first); returns the manifest bytes."""
        config_digest = self.push_blob(repo, config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": self.push_blob(repo, layer),
                    "size": len(layer),
                }
                for layer in layers
            ],
        }
        body = json.dumps(manifest).encode()
        headers = {"Content-Type": "application/vnd.oci.image.manifest.v1+json"}
        with _open(self, "PUT", f"/v2/{repo}/manifests/{tag}", body, headers) as response:
            assert response.status == 201, response.status
        return body


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
    context = None
    if registry.tls is not None:
        import ssl

        context = ssl.create_default_context(cafile=str(registry.root / "ca.pem"))
    return urllib.request.urlopen(request, timeout=30, context=context)
