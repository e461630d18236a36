"""The URL a Dragonfly task id is computed from, as dfdaemon 1.5.10 writes it.

With no filtered query keys dfdaemon hashes the URL exactly as given. Otherwise it parses the
URL (WHATWG URL rules, as the Rust `url` crate implements them), drops the query pairs whose key
is filtered, sorts the rest by key (a stable sort: repeated keys keep their order), escapes
keys and values the way Go's `url.QueryEscape` does, and serialises the URL again. A URL
written with no path (`https://host?x=1`) keeps having none.

Only http and https URLs with ASCII host names are canonicalised here; anything else raises
ValueError rather than risk a task id that differs from dfdaemon's. Labels written in punycode
(`xn--`) are lower-cased but not decoded and checked as dfdaemon would.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from urllib.parse import unquote_to_bytes

__all__ = ["DEFAULT_FILTERED_QUERY_PARAMS", "canonical_url"]

# dfdaemon's default for a proxy rule and for dfget: the signature keys of S3, GCS, OSS, OBS
# and COS pre-signed URLs, and containerd's `ns`, once each in this order.
DEFAULT_FILTERED_QUERY_PARAMS: tuple[str, ...] = (
    "X-Amz-Algorithm",
    "X-Amz-Credential",
    "X-Amz-Date",
    "X-Amz-Expires",
    "X-Amz-SignedHeaders",
    "X-Amz-Signature",
    "X-Amz-Security-Token",
    "X-Amz-User-Agent",
    "X-Goog-Algorithm",
    "X-Goog-Credential",
    "X-Goog-Date",
    "X-Goog-Expires",
    "X-Goog-SignedHeaders",
    "X-Goog-Signature",
    "OSSAccessKeyId",
    "Expires",
    "Signature",
    "SecurityToken",
    "AccessKeyId",
    "X-Obs-Date",
    "X-Obs-Security-Token",
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
    "x-cos-security-token",
    "ns",
)

_DEFAULT_PORTS = {"http": 80, "https": 443}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")

# WHATWG percent-encode sets beyond the C0 controls and everything above 0x7E.
_FRAGMENT_SET = frozenset(' "<>`')
_PATH_SET = _FRAGMENT_SET | frozenset("#?{}")
_USERINFO_SET = _PATH_SET | frozenset("/:;=@[\\]^|")
_FORBIDDEN_IN_DOMAIN = frozenset(" #%/:<>?@[\\]^|")
_QUERY_UNRESERVED = frozenset("-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

_SINGLE_DOT = frozenset({".", "%2e"})
_DOUBLE_DOT = frozenset({"..", ".%2e", "%2e.", "%2e%2e"})


def canonical_url(url: str, filtered_query_params: Sequence[str]) -> str:
    """`url` as dfdaemon hashes it into a task id when `filtered_query_params` are dropped."""
    if not filtered_query_params:
        return url
    filtered = set(filtered_query_params)
    text = url.strip("".join(map(chr, range(0x21)))).translate({9: None, 10: None, 13: None})
    scheme_match = _SCHEME.match(text)
    if scheme_match is None:
        raise ValueError(f"not an absolute URL: {url!r}")
    scheme = scheme_match.group(1).lower()
    if scheme not in _DEFAULT_PORTS:
        raise ValueError(f"only http and https URLs are canonicalised, not {scheme}:")
    rest = text[scheme_match.end() :].lstrip("/\\")
    rest, fragment = _split_off(rest, "#")
    rest, query = _split_off(rest, "?")
    authority, path = _split_path(rest)
    serialised = f"{scheme}://{_authority(authority, scheme)}"
    if not _written_without_path(url):
        serialised += _path(path)
    pairs = [pair for pair in _query_pairs(query or "") if pair[0] not in filtered]
    pairs.sort(key=lambda pair: pair[0])
    if pairs:
        serialised += "?" + "&".join(f"{_escape(k)}={_escape(v)}" for k, v in pairs)
    if fragment is not None:
        serialised += "#" + _percent_encode(fragment, _FRAGMENT_SET)
    return serialised


def _split_off(text: str, delimiter: str) -> tuple[str, str | None]:
    head, found, tail = text.partition(delimiter)
    return head, tail if found else None


def _split_path(text: str) -> tuple[str, str]:
    """The authority, and the path after its first slash (either slash)."""
    match = re.search(r"[/\\]", text)
    if match is None:
        return text, ""
    return text[: match.start()], text[match.end() :]


def _written_without_path(url: str) -> bool:
    """dfdaemon's own test on the URL as given: nothing but the authority before ? or #."""
    _, found, rest = url.partition("://")
    return bool(found) and "/" not in re.split(r"[?#]", rest, maxsplit=1)[0]


def _authority(authority: str, scheme: str) -> str:
    userinfo, at, hostport = authority.rpartition("@")
    if at and not hostport:
        raise ValueError("a URL with credentials but no host")
    credentials = ""
    if at:
        username, colon, password = userinfo.partition(":")
        credentials = _percent_encode(username, _USERINFO_SET)
        if colon and password:
            credentials += ":" + _percent_encode(password, _USERINFO_SET)
        if credentials:
            credentials += "@"
    host, port = _split_port(hostport)
    shown_port = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    return credentials + _host(host) + shown_port


def _split_port(hostport: str) -> tuple[str, int | None]:
    closing = hostport.rfind("]") if hostport.startswith("[") else -1
    colon = hostport.find(":", closing + 1)
    if colon < 0:
        return hostport, None
    host, digits = hostport[:colon], hostport[colon + 1 :]
    if not digits:
        return host, None
    if not digits.isascii() or not digits.isdigit() or int(digits) > 65535:
        raise ValueError(f"invalid port {digits!r}")
    return host, int(digits)


def _host(host: str) -> str:
    if not host:
        raise ValueError("a URL with an empty host")
    if host.startswith("["):
        if not host.endswith("]") or "%" in host:
            raise ValueError(f"invalid IPv6 host {host!r}")
        try:
            address = ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise ValueError(f"invalid IPv6 host {host!r}") from exc
        return f"[{_ipv6_text(address)}]"
    try:
        domain = unquote_to_bytes(host).decode("ascii").lower()
    except UnicodeDecodeError as exc:
        raise ValueError(f"non-ASCII host names are not canonicalised: {host!r}") from exc
    if not domain.isascii():
        raise ValueError(f"non-ASCII host names are not canonicalised: {host!r}")
    if any(c in _FORBIDDEN_IN_DOMAIN or ord(c) < 0x20 or c == "\x7f" for c in domain):
        raise ValueError(f"forbidden character in host {host!r}")
    if _ends_in_a_number(domain):
        return _ipv4_text(domain)
    return domain


def _ipv6_text(address: ipaddress.IPv6Address) -> str:
    """WHATWG's form: lower-case hex, the first longest run of two or more zeros as `::`."""
    pieces = [int.from_bytes(address.packed[i : i + 2]) for i in range(0, 16, 2)]
    best_start, best_length, start = -1, 1, -1
    for i, piece in enumerate([*pieces, 1]):
        if piece == 0 and start < 0:
            start = i
        elif piece != 0 and start >= 0:
            if i - start > best_length:
                best_start, best_length = start, i - start
            start = -1
    if best_start < 0:
        return ":".join(f"{p:x}" for p in pieces)
    head = ":".join(f"{p:x}" for p in pieces[:best_start])
    tail = ":".join(f"{p:x}" for p in pieces[best_start + best_length :])
    return f"{head}::{tail}"


def _ipv4_number(part: str) -> int | None:
    """A WHATWG IPv4 part (decimal, 0x hex or 0-prefixed octal); None when it is not one."""
    radix, digits = 10, part
    if part[:2].lower() == "0x":
        radix, digits = 16, part[2:]
    elif len(part) >= 2 and part.startswith("0"):
        radix, digits = 8, part[1:]
    if not digits:
        return 0
    allowed = {8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}[radix]
    if not all(c in allowed for c in digits):
        return None
    return int(digits, radix)


def _ends_in_a_number(domain: str) -> bool:
    labels = domain.split(".")
    if labels[-1] == "" and len(labels) > 1:
        labels.pop()
    last = labels[-1]
    return bool(last) and (last.isdigit() or _ipv4_number(last) is not None)


def _ipv4_text(domain: str) -> str:
    parts = domain.split(".")
    if parts[-1] == "":
        parts.pop()
    numbers = [_ipv4_number(part) if part else None for part in parts]
    if len(parts) > 4 or any(n is None for n in numbers):
        raise ValueError(f"invalid IPv4 host {domain!r}")
    *leading, last = [n for n in numbers if n is not None]
    if any(n > 255 for n in leading) or last >= 256 ** (4 - len(leading)):
        raise ValueError(f"invalid IPv4 host {domain!r}")
    value = last + sum(n << (8 * (3 - i)) for i, n in enumerate(leading))
    return str(ipaddress.IPv4Address(value))


def _path(path: str) -> str:
    """The path with `.` and `..` segments resolved and the path set percent-encoded."""
    segments = re.split(r"[/\\]", path)
    kept: list[str] = []
    for i, raw in enumerate(segments):
        last = i == len(segments) - 1
        segment = _percent_encode(raw, _PATH_SET)
        if segment.lower() in _DOUBLE_DOT:
            if kept:
                kept.pop()
            if last:
                kept.append("")
        elif segment.lower() in _SINGLE_DOT:
            if last:
                kept.append("")
        else:
            kept.append(segment)
    return "/" + "/".join(kept)


def _query_pairs(query: str) -> list[tuple[str, str]]:
    """The query's pairs as dfdaemon reads them: `;` drops a pair, `+` is a space."""
    pairs = []
    for segment in query.split("&"):
        if not segment or ";" in segment:
            continue
        key, _, value = segment.partition("=")
        pairs.append((_form_decode(key), _form_decode(value)))
    return pairs


def _form_decode(text: str) -> str:
    return unquote_to_bytes(text.replace("+", " ")).decode("utf-8", "replace")


def _escape(text: str) -> str:
    """Go's `url.QueryEscape`: unreserved bytes stay, space becomes +, the rest %XX."""
    out = []
    for byte in text.encode():
        char = chr(byte)
        if char in _QUERY_UNRESERVED:
            out.append(char)
        elif char == " ":
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


def _percent_encode(text: str, extra: frozenset[str]) -> str:
    out = []
    for char in text:
        if char in extra or ord(char) < 0x20 or ord(char) > 0x7E:
            out.extend(f"%{byte:02X}" for byte in char.encode())
        else:
            out.append(char)
    return "".join(out)
