"""Image references, auth challenges, manifests and docker credentials: pure parsing."""

from __future__ import annotations

import base64
import json
import os
import pathlib
import re
import stat

import pytest

from dfagent.registry import manifests
from dfagent.registry.auth import parse_challenge
from dfagent.registry.credentials import Credentials, CredentialsError, from_docker_config
from dfagent.registry.manifests import BadManifest, Platform
from dfagent.registry.reference import BadReference, parse_image
from dfagent.tools.get import parse_target

HEX = "a" * 64


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        ("ubuntu", "docker.io", "library/ubuntu", None, None),
        ("ubuntu:24.04", "docker.io", "library/ubuntu", "24.04", None),
        ("bitnami/redis:7", "docker.io", "bitnami/redis", "7", None),
        ("ghcr.io/org/app", "ghcr.io", "org/app", None, None),
        ("localhost/app:dev", "localhost", "app", "dev", None),
        ("127.0.0.1:5000/a/b/c:v1", "127.0.0.1:5000", "a/b/c", "v1", None),
        (f"r.example/app@sha256:{HEX}", "r.example", "app", None, f"sha256:{HEX}"),
        (f"r.example:443/app:1@sha256:{HEX}", "r.example:443", "app", "1", f"sha256:{HEX}"),
        ("[::1]:5000/app", "[::1]:5000", "app", None, None),
    ],
)
def test_image_references(text, registry, repository, tag, digest):
    image = parse_image(text)
    assert (image.registry, image.repository, image.tag) == (registry, repository, tag)
    assert (str(image.digest) if image.digest else None) == digest
    assert image.reference == (digest or tag or "latest")


def test_docker_hub_has_its_own_api_host():
    assert parse_image("ubuntu").api_host == "registry-1.docker.io"
    assert parse_image("r.example/ubuntu").api_host == "r.example"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "UPPER",
        "app:",
        "app:-bad",
        "r.example/",
        "app@sha256:short",
        "a//b",
        "r.exa mple/a",
        "localhost:99999/app:1",
        "[::1]:70000/app",
        "r.example:0/app",
        "[1.2.3.4]/app",
    ],
)
def test_bad_references_say_why(text):
    with pytest.raises(BadReference, match=re.escape(repr(text))):
        parse_image(text)


def test_challenges():
    bearer = parse_challenge(
        'Bearer realm="https://auth.example/token",service="registry.example",'
        'scope="repository:a/b:pull,push"'
    )
    assert bearer is not None
    assert bearer.scheme == "bearer"
    assert bearer.params == {
        "realm": "https://auth.example/token",
        "service": "registry.example",
        "scope": "repository:a/b:pull,push",
    }
    basic = parse_challenge('Basic realm="r \\"quoted\\""')
    assert basic is not None
    assert (basic.scheme, basic.params) == ("basic", {"realm": 'r "quoted"'})
    assert parse_challenge("   ") is None


def _index(*platforms: dict) -> dict:
    return {
        "mediaType": manifests.OCI_INDEX,
        "manifests": [
            {"mediaType": manifests.OCI_MANIFEST, "digest": f"sha256:{i:064x}", "size": 10}
            | ({"platform": p} if p else {})
            for i, p in enumerate(platforms)
        ],
    }


def test_platform_selection_keeps_every_match():
    index = _index(
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "amd64", "os.features": ["nydus.remoteimage.v1"]},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "unknown", "architecture": "unknown"},
    )
    amd64 = manifests.select(index, [Platform.parse("linux/amd64")])
    assert [d.digest.hex[-1] for d in amd64] == ["0", "1"]
    arm = manifests.select(index, [Platform.parse("linux/arm64/v8")])
    assert [d.platform for d in arm] == ["linux/arm64/v8"]
    assert len(manifests.select(index, None)) == 4
    with pytest.raises(
        BadManifest, match=r"no manifest for linux/s390x \(the index has linux/amd64"
    ):
        manifests.select(index, [Platform.parse("linux/s390x")])


@pytest.mark.parametrize("text", ["linux", "linux/", "/amd64", "a/b/c/d"])
def test_bad_platforms(text):
    with pytest.raises(ValueError, match="os/arch"):
        Platform.parse(text)


def test_manifest_parsing_checks_what_it_uses():
    good = {
        "schemaVersion": 2,
        "config": {"digest": f"sha256:{HEX}", "size": 2},
        "layers": [{"digest": f"sha256:{'b' * 64}", "size": 5, "mediaType": "x"}],
    }
    document = manifests.parse(json.dumps(good).encode(), "application/json")
    assert document["mediaType"] == manifests.OCI_MANIFEST
    assert [b.size for b in manifests.blobs_of(document)] == [2, 5]
    for broken, message in (
        (b"not json", "not JSON"),
        (json.dumps({"schemaVersion": 1}).encode(), "schemaVersion 2"),
        (json.dumps(good | {"layers": "x"}).encode(), "layers list"),
        (json.dumps(good | {"config": {"digest": "md5:1", "size": 1}}).encode(), "config.digest"),
        (json.dumps(good | {"config": {"digest": f"sha256:{HEX}", "size": -1}}).encode(), "size"),
    ):
        with pytest.raises(BadManifest, match=message):
            manifests.blobs_of(manifests.parse(broken, ""))


def test_docker_config_auths(tmp_path):
    config = tmp_path / "config.json"
    encoded = base64.b64encode(b"alice:pw:with:colons").decode()
    config.write_text(
        json.dumps(
            {
                "auths": {
                    "https://index.docker.io/v1/": {"auth": encoded},
                    "http://r.example:5000/v2/": {"username": "bob", "password": "pw2"},
                    "token.example": {"identitytoken": "refresh-me"},
                }
            }
        )
    )
    assert from_docker_config("docker.io", config) == Credentials("alice", "pw:with:colons")
    assert from_docker_config("r.example:5000", config) == Credentials("bob", "pw2")
    assert from_docker_config("token.example", config).identity_token == "refresh-me"
    assert from_docker_config("other.example", config) is None
    assert from_docker_config("r.example", tmp_path / "missing.json") is None
    assert "pw2" not in repr(from_docker_config("r.example:5000", config))


def test_docker_config_credential_helper(tmp_path, monkeypatch):
    helper = tmp_path / "docker-credential-fake"
    helper.write_text(
        "#!/bin/sh\nread server\n"
        'if [ "$server" = r.example ]; then echo \'{"Username":"carol","Secret":"s3"}\'; '
        "else echo 'credentials not found in native keychain'; exit 1; fi\n"
    )
    helper.chmod(helper.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"credHelpers": {"r.example": "fake"}, "credsStore": "fake"}))
    assert from_docker_config("r.example", config) == Credentials("carol", "s3")
    assert from_docker_config("elsewhere.example", config) is None
    config.write_text(json.dumps({"credsStore": "absent"}))
    with pytest.raises(CredentialsError, match="docker-credential-absent not found"):
        from_docker_config("r.example", config)
    config.write_text("{broken")
    with pytest.raises(CredentialsError, match="cannot read docker config"):
        from_docker_config("r.example", config)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"auths": 5}, "auths must be a JSON object"),
        ({"credHelpers": 5}, "credHelpers must be a JSON object"),
        ({"auths": ["r.example"]}, "auths must be a JSON object"),
        ([], "is not a JSON object"),
    ],
)
def test_docker_config_of_the_wrong_shape(tmp_path, content, message):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(content))
    with pytest.raises(CredentialsError, match=message):
        from_docker_config("r.example", config)


def test_docker_config_the_user_may_not_read(tmp_path, monkeypatch):
    def owner_only(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))  # what stat says to others

    monkeypatch.setattr(pathlib.Path, "stat", owner_only)
    with pytest.raises(CredentialsError, match=r"cannot read docker config .*Permission denied"):
        from_docker_config("r.example", tmp_path / "docker")


@pytest.mark.parametrize(
    ("text", "url", "name"),
    [
        (
            f"r.example/app@sha256:{HEX}",
            f"https://r.example/v2/app/blobs/sha256:{HEX}",
            "r.example",
        ),
        (
            f"https://r.example:8443/v2/a/b/blobs/sha256:{HEX}",
            f"https://r.example:8443/v2/a/b/blobs/sha256:{HEX}",
            "r.example:8443",
        ),
        (
            f"ubuntu@sha256:{HEX}",
            f"https://registry-1.docker.io/v2/library/ubuntu/blobs/sha256:{HEX}",
            "registry-1.docker.io",
        ),
    ],
)
def test_get_targets(text, url, name):
    target = parse_target(text, plain_http=False)
    assert str(target.url) == url
    assert target.registry_name == name
