"""Where a proxy request goes: the upstream URL, the rule that applies, and whether it is a
blob read the cache serves. Pure: no I/O, table-tested."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from yarl import URL

from dfagent.core.digest import Digest, InvalidDigest, blob_reference
from dfagent.errors import BadRequest
from dfagent.proxy.config import ProxyConfig, Rule
from dfagent.proxy.headers import REGISTRY

__all__ = ["Route", "route"]

# containerd's `?ns=` names a registry by its host; Docker Hub's API lives elsewhere.
_NAMESPACE_HOSTS = {"docker.io": "registry-1.docker.io"}


@dataclass(frozen=True, slots=True)
class Route:
    upstream: URL
    rule: Rule | None
    digest: Digest | None  # set for a blob GET/HEAD that the cache serves
    mirror: bool  # origin-form request (registry mirror) rather than a forward-proxy one


def route(config: ProxyConfig, method: str, target: str, headers: Mapping[str, str]) -> Route:
    """Resolve a request whose request-target is `target` (absolute- or origin-form)."""
    if target.startswith("/"):
        upstream = _mirror_upstream(config, target, headers)
        mirror = True
    else:
        upstream = _absolute(target)
        mirror = False
    rule = _first_match(config.rules, upstream)
    if rule is not None:
        upstream = _apply(rule, upstream)
    _check_host(upstream)
    if upstream.user is not None or upstream.password is not None:
        # They would reach the registry unseen by the access checks (the blob would count as
        # served to an anonymous caller) and travel on in the URL, to schedulers and logs.
        raise BadRequest("credentials in the URL are not accepted: send an Authorization header")
    digest = None
    if method in ("GET", "HEAD") and rule is not None:
        # Matched on the raw path, so an encoded slash cannot hide a path in the digest.
        reference = blob_reference(upstream.raw_path)
        if reference is not None:
            try:
                digest = Digest.parse(unquote(reference))
            except InvalidDigest as exc:
                raise BadRequest(str(exc)) from None
    return Route(upstream, rule, digest, mirror)


def _check_host(url: URL) -> None:
    """A host a connection can be made to: DNS labels of 1 to 63 characters (else the
    connection would fail in the IDNA codec, as a 500)."""
    try:
        (url.raw_host or "").encode("idna")
    except UnicodeError:
        raise BadRequest(f"not a host name: {url.raw_host}") from None


def _absolute(target: str) -> URL:
    try:
        url = URL(target, encoded=True)
    except ValueError as exc:
        raise BadRequest(f"cannot parse request target: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise BadRequest("request target must be an http(s) URL or an absolute path")
    return url


def _mirror_upstream(config: ProxyConfig, target: str, headers: Mapping[str, str]) -> URL:
    path = URL(target, encoded=True)
    registry = headers.get(REGISTRY)
    if registry:
        try:
            base = URL(registry)
        except ValueError:
            base = URL()
        if base.scheme not in ("http", "https") or not base.host:
            raise BadRequest(f"{REGISTRY} must be a URL such as https://index.docker.io")
    elif namespace := path.query.get("ns"):
        host = _NAMESPACE_HOSTS.get(namespace, namespace)
        try:
            base = URL(f"https://{host}")
        except ValueError:
            base = None
        if base is None or not base.host or base.path not in ("", "/"):
            raise BadRequest(f"?ns= must name a registry host, got {namespace!r}")
        path = path.with_query({k: v for k, v in path.query.items() if k != "ns"})
    else:
        base = URL(config.registry_mirror)
    return base.with_path(path.raw_path, encoded=True).with_query(path.raw_query_string)


def _first_match(rules: tuple[Rule, ...], url: URL) -> Rule | None:
    plain = str(url.with_query(None))
    for rule in rules:
        if re.search(rule.regex, plain):
            return rule
    return None


def _apply(rule: Rule, url: URL) -> URL:
    if rule.use_tls is not None:
        scheme = "https" if rule.use_tls else "http"
        if url.scheme != scheme:
            # A default port follows the scheme; an explicit one is kept.
            url = url.with_scheme(scheme).with_port(url.explicit_port)
    if rule.redirect:
        redirected = URL(f"//{rule.redirect}")
        url = url.with_host(redirected.host or "").with_port(redirected.port)
    return url
