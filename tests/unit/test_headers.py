from __future__ import annotations

from multidict import CIMultiDict

from dfagent.proxy.headers import end_to_end


def test_hop_by_hop_and_connection_listed_fields_are_dropped():
    headers = CIMultiDict(
        [
            ("Connection", "keep-alive, X-Hop"),
            ("Connection", "Upgrade"),
            ("X-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("Proxy-Authorization", "Basic x"),
            ("TE", "trailers"),
            ("Upgrade", "h2c"),
            ("X-Dragonfly-Registry", "https://r"),
            ("Authorization", "Bearer t"),
            ("Accept", "a"),
            ("Accept", "b"),
            ("Host", "h"),
        ]
    )
    kept = end_to_end(headers, drop=("host",))
    assert list(kept.items()) == [("Authorization", "Bearer t"), ("Accept", "a"), ("Accept", "b")]


def test_plain_mapping_is_accepted():
    assert dict(end_to_end({"Connection": "close", "A": "1"})) == {"A": "1"}
