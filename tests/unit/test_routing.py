from __future__ import annotations

import pytest

from dfagent.errors import BadRequest
from dfagent.proxy.config import ProxyConfig, Rule
from dfagent.proxy.routing import route

HEX = "ab" * 32
BLOB = f"/v2/library/alpine/blobs/sha256:{HEX}"


@pytest.mark.parametrize(
    ("config", "method", "target", "headers", "upstream", "is_blob"),
    [
        (ProxyConfig(), "GET", f"http://reg:5000{BLOB}", {}, f"http://reg:5000{BLOB}", True),
        (ProxyConfig(), "HEAD", f"http://reg{BLOB}", {}, f"http://reg{BLOB}", True),
        (ProxyConfig(), "POST", f"http://reg{BLOB}", {}, f"http://reg{BLOB}", False),
        (
            ProxyConfig(),
            "GET",
            "http://reg/v2/a/manifests/1",
            {},
            "http://reg/v2/a/manifests/1",
            False,
        ),
        (
            ProxyConfig(),
            "GET",
            "http://reg/v2/a/blobs/uploads/u1",
            {},
            "http://reg/v2/a/blobs/uploads/u1",
            False,
        ),
        (
            ProxyConfig(),
            "GET",
            f"http://reg{BLOB}?sig=1&x=2",
            {},
            f"http://reg{BLOB}?sig=1&x=2",
            True,
        ),
        (
            ProxyConfig(rules=(Rule("blobs/sha256", use_tls=True),)),
            "GET",
            f"http://reg{BLOB}",
            {},
            f"https://reg{BLOB}",
            True,
        ),
        (
            ProxyConfig(rules=(Rule("blobs/sha256", use_tls=True),)),
            "GET",
            f"http://reg:8080{BLOB}",
            {},
            f"https://reg:8080{BLOB}",
            True,
        ),
        (
            ProxyConfig(rules=(Rule(".*", use_tls=False, redirect="mirror:5000"),)),
            "GET",
            "https://reg/v2/a/manifests/1",
            {},
            "http://mirror:5000/v2/a/manifests/1",
            False,
        ),
        (ProxyConfig(rules=()), "GET", f"http://reg{BLOB}", {}, f"http://reg{BLOB}", False),
        # registry mirror (origin-form)
        (
            ProxyConfig(),
            "GET",
            BLOB,
            {"X-Dragonfly-Registry": "http://r:5000"},
            f"http://r:5000{BLOB}",
            True,
        ),
        (ProxyConfig(), "GET", f"{BLOB}?ns=ghcr.io", {}, f"https://ghcr.io{BLOB}", True),
        (
            ProxyConfig(),
            "GET",
            f"{BLOB}?ns=docker.io",
            {},
            f"https://registry-1.docker.io{BLOB}",
            True,
        ),
        (ProxyConfig(), "GET", BLOB, {}, f"https://index.docker.io{BLOB}", True),
        (
            ProxyConfig(registry_mirror="http://local:5000"),
            "GET",
            "/v2/a/manifests/x?ns=reg.io&other=1",
            {"X-Dragonfly-Registry": "https://h"},
            "https://h/v2/a/manifests/x?ns=reg.io&other=1",
            False,
        ),
    ],
)
def test_routes(config, method, target, headers, upstream, is_blob):
    result = route(config, method, target, headers)
    assert str(result.upstream) == upstream
    assert (result.digest is not None) == is_blob
    assert result.mirror == target.startswith("/")
    if is_blob:
        assert result.digest.hex == HEX


@pytest.mark.parametrize(
    ("target", "headers", "reason"),
    [
        ("http://reg/v2/a/blobs/sha256:XYZ", {}, "digest must be"),
        ("http://reg/v2/a/blobs/sha256:..%2Fetc%2Fpasswd", {}, "digest must be"),
        ("/v2/a/blobs/x", {"X-Dragonfly-Registry": "reg.io"}, "X-Dragonfly-Registry"),
        ("/v2/a/manifests/x?ns=a/b", {}, "?ns="),
        ("ftp://reg/v2/", {}, "http(s) URL"),
        # credentials in the URL would bypass the access checks: in any of the three forms
        ("http://u:p@reg/v2/a/blobs/sha256:" + HEX, {}, "Authorization header"),
        ("/v2/a/blobs/sha256:" + HEX, {"X-Dragonfly-Registry": "https://u:p@reg"}, "Authorization"),
        ("/v2/a/blobs/sha256:" + HEX + "?ns=u:p@reg", {}, "Authorization header"),
        ("http://token@reg/v2/a/manifests/latest", {}, "Authorization header"),
    ],
)
def test_bad_requests(target, headers, reason):
    with pytest.raises(
        BadRequest, match=reason.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")
    ):
        route(ProxyConfig(), "GET", target, headers)
