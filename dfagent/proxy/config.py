"""Config of the nydusd/containerd-facing proxy."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from dfagent.configtypes import Duration, ListenAddress

__all__ = ["ProxyConfig", "Rule"]


@dataclass(frozen=True, slots=True)
class Rule:
    """Routing for URLs that match `regex` (searched in the upstream URL without its query).

    A blob GET/HEAD is served through the cache only when some rule matches it. The first
    matching rule also decides the upstream: `use_tls` true/false forces https/http (unset keeps
    the request's scheme) and `redirect` replaces the upstream `host[:port]`.
    """

    regex: str
    use_tls: bool | None = None
    redirect: str | None = None

    def check(self) -> list[tuple[str, str]]:
        problems = []
        try:
            re.compile(self.regex)
        except re.error as exc:
            problems.append(("regex", f"not a valid regular expression: {exc}"))
        if self.redirect is not None and not _is_host_and_port(self.redirect):
            problems.append(("redirect", "expected host or host:port (port 1-65535)"))
        return problems


def _is_host_and_port(text: str) -> bool:
    if not text or "/" in text:
        return False
    try:
        return urlsplit(f"//{text}").port != 0
    except ValueError:  # a port out of range or not a number, an unclosed [
        return False


DEFAULT_RULES = (Rule(regex=r"blobs/sha256.*"),)


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listen: ListenAddress = ListenAddress("127.0.0.1", 4001)
    # Upstream for origin-form (registry mirror) requests without X-Dragonfly-Registry or ?ns=.
    registry_mirror: str = "https://index.docker.io"
    rules: tuple[Rule, ...] = field(default_factory=lambda: DEFAULT_RULES)
    # After a ranged blob read, fetch the rest of the blob in the background (also per request
    # with `X-Dragonfly-Prefetch: true`), at most origin.prefetch_bandwidth.
    prefetch: bool = False
    # Blob requests per second the proxy accepts (bursts up to one second's worth); above it,
    # 429 with X-Dragonfly-Error-Type: proxy. Null: no limit. nydusd 2.2 fails a read on 429.
    rate_limit: float | None = None
    # CONNECT to a host matching one of these regexes is intercepted: TLS is terminated with a
    # leaf certificate for that host signed by ca_cert/ca_key, and the requests inside are
    # served like any other (cached, shared). Other CONNECTs are blind tunnels.
    intercept: tuple[str, ...] = ()
    ca_cert: str | None = None
    ca_key: str | None = None
    # A client must send its first request head within this long (slow clients hold nothing).
    head_timeout: Duration = Duration(10)
    # An idle keep-alive connection is closed after this long; a client that takes no byte of
    # a blob for this long is cut off.
    idle_timeout: Duration = Duration(120)
    # A blind CONNECT tunnel through which no byte moves this long is cut off (longer than
    # idle_timeout: a request inside may wait on a slow server, as a large upload's last PUT).
    tunnel_idle_timeout: Duration = Duration(900)
    # How long in-flight responses may run on after SIGTERM before they are cut.
    shutdown_grace: Duration = Duration(10)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        try:
            parts = urlsplit(self.registry_mirror)
            parts.port  # noqa: B018 (parses it: out of range or not a number raises)
        except ValueError as exc:
            problems.append(("registry_mirror", f"not a URL: {exc}"))
        else:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                expected = "expected a URL such as https://index.docker.io"
                problems.append(("registry_mirror", expected))
            elif parts.username is not None or parts.password is not None:
                problems.append(
                    ("registry_mirror", "must not carry credentials: clients send their own")
                )
        for i, pattern in enumerate(self.intercept):
            try:
                re.compile(pattern)
            except re.error as exc:
                problems.append((f"intercept[{i}]", f"not a valid regular expression: {exc}"))
        if self.intercept and (self.ca_cert is None or self.ca_key is None):
            problems.append(("ca_cert", "intercept needs ca_cert and ca_key"))
        if self.rate_limit is not None and self.rate_limit <= 0:
            problems.append(("rate_limit", "must be positive (null: no limit)"))
        if self.head_timeout <= 0:
            problems.append(("head_timeout", "must be positive"))
        if self.idle_timeout <= 0:
            problems.append(("idle_timeout", "must be positive"))
        if self.tunnel_idle_timeout <= 0:
            problems.append(("tunnel_idle_timeout", "must be positive"))
        if self.shutdown_grace < 0:
            problems.append(("shutdown_grace", "cannot be negative"))
        return problems
