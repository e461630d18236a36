from __future__ import annotations

import pytest

from dfagent.configtypes import ByteSize, Duration, ListenAddress


@pytest.mark.parametrize(
    ("text", "value", "shown"),
    [
        ("1MiB", 2**20, "1MiB"),
        ("50GiB", 50 * 2**30, "50GiB"),
        (4096, 4096, "4KiB"),
        ("1.5GiB", 1536 * 2**20, "1536MiB"),
        ("1KB", 1000, "1000B"),
        ("0", 0, "0B"),
        ("64 kib", 65536, "64KiB"),
    ],
)
def test_sizes(text, value, shown):
    assert ByteSize.parse(text) == value
    assert str(ByteSize.parse(text)) == shown
    assert ByteSize.parse(str(ByteSize.parse(text))) == value


@pytest.mark.parametrize("text", ["", "MiB", "1XB", "-1", -1, True, "1.3B", [1]])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        ByteSize.parse(text)


@pytest.mark.parametrize(
    ("text", "seconds", "shown"),
    [
        ("5s", 5, "5s"),
        ("10m", 600, "10m"),
        ("500ms", 0.5, "500ms"),
        ("1h30m", 5400, "90m"),
        (3, 3, "3s"),
        ("7d", 7 * 86400, "7d"),
        (0, 0, "0s"),
    ],
)
def test_durations(text, seconds, shown):
    assert Duration.parse(text) == seconds
    assert str(Duration.parse(text)) == shown
    assert Duration.parse(str(Duration.parse(text))) == seconds


@pytest.mark.parametrize("text", ["", "5", "5 s", "s", "5sec", "-1s", -2, False, "1h-"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        Duration.parse(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:4001", "127.0.0.1", 4001),
        ("[::1]:80", "::1", 80),
        ("0.0.0.0:0", "0.0.0.0", 0),
        ("node.local:4000", "node.local", 4000),
    ],
)
def test_listen_addresses(text, host, port):
    address = ListenAddress.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    "text", ["4001", ":4001", "::1:80", "host:70000", "host:x", "[zz]:1", 4001]
)
def test_bad_listen_addresses(text):
    with pytest.raises(ValueError):
        ListenAddress.parse(text)
