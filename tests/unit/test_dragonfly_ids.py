from __future__ import annotations

import uuid

import pytest

from dfagent.dragonfly import (
    DEFAULT_FILTERED_QUERY_PARAMS,
    canonical_url,
    host_id,
    peer_id,
    piece_id,
    task_id_for_blob,
    task_id_for_url,
)

SHA256_HEX = "b2c366cce7e68013d5441c6326d5a3e1b12aeb5ed58564d0fd3fa089bc29cb6e"


# Task ids a real dfdaemon 1.5.10 gave these downloads (dfget, default filtered query keys):
# the names of the task directories in its storage.
@pytest.mark.parametrize(
    ("url", "tag", "application", "expected"),
    [
        (
            "http://127.0.0.1:18765/files/a.bin",
            "",
            "",
            "19dc9d9dc716c331b6fe65100d8ed86748aecc3bdc5c44a4aef0918f1fcc267b",
        ),
        (
            "HTTP://LOCALHOST:18765/files/./b/../c.bin?z=1&X-Amz-Date=2&a=%41+b&ns=docker.io#frag",
            "",
            "",
            "f34c3d549caac5ab13759d65779ec1999d81089ad0b6d721acef20880bae6037",
        ),
        (
            "http://127.0.0.1:18765/files/d.bin",
            "t1",
            "app",
            "a7ed2ebc2d88335ba8dc9e12860583b6b99ffd062962cf182547681e6d66b0cb",
        ),
    ],
)
def test_task_ids_dfdaemon_gave(url, tag, application, expected):
    assert task_id_for_url(url, tag=tag, application=application) == expected


# dfdaemon 1.5.10's own task id vectors (explicit filtered keys, piece lengths).
@pytest.mark.parametrize(
    ("url", "piece_length", "tag", "application", "filtered", "expected"),
    [
        (
            "https://example.com",
            None,
            "foo",
            "bar",
            [],
            "06408fbf247ddaca478f8cb9565fe5591c28efd0994b8fea80a6a87d3203c5ca",
        ),
        (
            "https://example.com",
            None,
            "foo",
            "",
            [],
            "3c3f230ef9f191dd2821510346a7bc138e4894bee9aee184ba250a3040701d2a",
        ),
        (
            "https://example.com",
            None,
            "",
            "bar",
            [],
            "c9f9261b7305c24371244f9f149f5d4589ed601348fdf22d7f6f4b10658fdba2",
        ),
        (
            "https://example.com",
            1024,
            "",
            "",
            [],
            "9f7c9aafbc6f30f8f41a96ca77eeae80c5b60964b3034b0ee43ccf7b2f9e52b8",
        ),
        (
            "https://example.com?foo=foo&bar=bar",
            None,
            "",
            "",
            ["foo", "bar"],
            "457b4328cde278e422c9e243f7bfd1e97f511fec43a80f535cf6b0ef6b086776",
        ),
        (
            "https://example.com/file.txt?z=9&b=2&a=1",
            None,
            "foo",
            "bar",
            ["z"],
            "8b3f6e9b9b8fe20903bced565cfd1d0aaef354a4c17573f0c2c1979210443f9d",
        ),
        (
            "https://example.com/file.txt?b=2&a=1&b=1",
            None,
            "",
            "",
            ["c"],
            "7c8801d0596be5e8f9449d5c4af23866c72fe5205119c0e5912981f3b16a37aa",
        ),
        (
            "https://example.com/file.txt?k=a b&m=x*y&n=c~d",
            1024,
            "",
            "",
            ["none"],
            "6196a6846023f6d3c1e4d30f6c86f3d4186e4c664a33e5692b0e04e49b26a9af",
        ),
        (
            "https://example.com/file.txt?b=2&a=1",
            None,
            "",
            "",
            [],
            "980ee327518ccc5a7c30703e1a2232e8ba9047b39431f940636c85b6146f8b9a",
        ),
    ],
)
def test_task_id_vectors(url, piece_length, tag, application, filtered, expected):
    task = task_id_for_url(
        url,
        tag=tag,
        application=application,
        piece_length=piece_length,
        filtered_query_params=filtered,
    )
    assert task == expected


# What dfdaemon 1.5.10 hashes for each URL when the key `drop` is filtered (its URL parser
# gave these same strings).
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTP://EXAMPLE.COM:80/a/b?drop=1&x=2", "http://example.com/a/b?x=2"),
        ("https://Example.com:0443/p", "https://example.com/p"),
        ("https://example.com:8443/p?", "https://example.com:8443/p"),
        ("http://example.com/a/./b/../c?x=1", "http://example.com/a/c?x=1"),
        ("http://example.com/a/%2e%2E/c", "http://example.com/c"),
        ("http://example.com/a/.", "http://example.com/a/"),
        ("http://example.com/a/b/..?x=y", "http://example.com/a/?x=y"),
        ("http://example.com/a/../../b", "http://example.com/b"),
        ("http://example.com/a//b///c", "http://example.com/a//b///c"),
        ("http:\\\\example.com\\a", "http://example.com/a"),
        ("http:///example.com/a", "http://example.com/a"),
        ("http://example.com\\a\\b?x", "http://example.com?x="),  # no '/': the path is dropped
        ("http://EXAMPLE.com?drop=1", "http://example.com"),
        ("https://example.com?foo=foo#size", "https://example.com?foo=foo#size"),
        (
            'http://example.com/a b/"c"/<d>/`e`/{f}/é/^|[]',
            "http://example.com/a%20b/%22c%22/%3Cd%3E/%60e%60/%7Bf%7D/%C3%A9/^|[]",
        ),
        ("http://example.com/%7e/%7E?q=~", "http://example.com/%7e/%7E?q=~"),
        (
            "http://example.com/p?é=ü&a=%ZZ&b=%41&c=+&d=%2B&e=&f",
            "http://example.com/p?a=%25ZZ&b=A&c=+&d=%2B&e=&f=&%C3%A9=%C3%BC",
        ),
        ("http://example.com/p?a=1&&b=2&=&==x", "http://example.com/p?=&=%3Dx&a=1&b=2"),
        (
            "http://example.com/p?b=2&B=1&a=3&A=0&_=1",
            "http://example.com/p?A=0&B=1&_=1&a=3&b=2",
        ),
        ("http://example.com/p?b=2&a=1&b=1", "http://example.com/p?a=1&b=2&b=1"),
        ("http://example.com/p?a=1;b=2&c=3", "http://example.com/p?c=3"),
        ("http://example.com/p?d=%FF&x=a%20b", "http://example.com/p?d=%EF%BF%BD&x=a+b"),
        (
            'http://example.com/p#frag ment"<>`é',
            "http://example.com/p#frag%20ment%22%3C%3E%60%C3%A9",
        ),
        ("http://example.com/p?x=1#", "http://example.com/p?x=1#"),
        ("http://user:p@ss@example.com/p", "http://user:p%40ss@example.com/p"),
        ("http://us er:pa:ss@example.com/p", "http://us%20er:pa%3Ass@example.com/p"),
        ("http://:@example.com/p", "http://example.com/p"),
        ("http://0x7f.1/p", "http://127.0.0.1/p"),
        ("http://2130706433/p", "http://127.0.0.1/p"),
        ("http://0177.0.0.1./p", "http://127.0.0.1/p"),
        ("http://ex%41mple.com:/p", "http://example.com/p"),
        ("http://[0:0:0:0:0:0:0:1]:80/p", "http://[::1]/p"),
        ("http://[2001:DB8:0:0:1:0:0:1]/p", "http://[2001:db8::1:0:0:1]/p"),
        ("http://[1:0:0:2:0:0:0:3]/p", "http://[1:0:0:2::3]/p"),
        ("http://[2001:db8:0:1:1:1:1:1]/p", "http://[2001:db8:0:1:1:1:1:1]/p"),
        ("http://[::ffff:1.2.3.4]/p", "http://[::ffff:102:304]/p"),
        ("  http://example.com/p\t?x=\n1  ", "http://example.com/p?x=1"),
    ],
)
def test_canonical_url(url, expected):
    assert canonical_url(url, ["drop"]) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://1.2.3.4.5/p",
        "http://256.1.1.1/p",
        "http://foo.09/p",
        "http://exa mple.com/p",
        "http://example.com:99999/p",
        "http://example.com:8a/p",
        "http://@/p",
        "http://[::1/p",
        "http://bücher.example/p",
        "s3://bucket/key",
        "/relative/path",
    ],
)
def test_urls_not_canonicalised(url):
    with pytest.raises(ValueError):
        canonical_url(url, ["drop"])


def test_no_filtered_keys_hashes_the_url_as_given():
    assert canonical_url("HTTP://Example.com/./x?b=1&a=2", []) == "HTTP://Example.com/./x?b=1&a=2"


def test_default_filtered_keys_drop_presigned_signatures():
    assert len(set(DEFAULT_FILTERED_QUERY_PARAMS)) == len(DEFAULT_FILTERED_QUERY_PARAMS) == 30
    signed = "https://bucket.s3.example.com/key?X-Amz-Signature={}&X-Amz-Date={}&versionId=7"
    first = task_id_for_url(signed.format("aaaa", "20260101T000000Z"))
    assert first == task_id_for_url(signed.format("bbbb", "20260202T000000Z"))
    assert first == task_id_for_url("https://bucket.s3.example.com/key?versionId=7")
    assert first != task_id_for_url("https://bucket.s3.example.com/key?versionId=8")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (f"http://registry.example.com/v2/library/ubuntu/blobs/sha256:{SHA256_HEX}", SHA256_HEX),
        (f"http://localhost:5000/v2/myrepo/blobs/sha256:{SHA256_HEX}?ns=docker.io", SHA256_HEX),
        (f"https://registry.io/v2/org/team/project/blobs/sha256:{SHA256_HEX}", SHA256_HEX),
        (f"https://r.io/v2/a/blobs/sha512:{'ab' * 64}", "ab" * 64),
        ("https://r.io/v2/a/blobs/crc32:12345", "12345"),
        (f"https://r.io/v2/a/blobs/sha256:{'Z' * 64}", "Z" * 64),  # length checked, not hex
        ("https://example.com/file.txt", None),
        (f"http://registry.example.com/blobs/sha256:{SHA256_HEX}", None),
        (f"http://registry.example.com/v2/blobs/sha256:{SHA256_HEX}", None),
        (f"http://registry.example.com/v2/repo/manifests/sha256:{SHA256_HEX}", None),
        (f"registry.example.com/v2/repo/blobs/sha256:{SHA256_HEX}", None),
    ],
)
def test_task_id_for_blob(url, expected):
    assert task_id_for_blob(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "http://registry.example.com/v2/library/ubuntu/blobs/sha256:abc",
        "http://registry.example.com/v2/repo/blobs/md5:8a04994a666b4e4b20a2fd9e5a44f44c",
        "http://registry.example.com/v2/repo/blobs/invalid-digest",
        f"http://registry.example.com/v2/repo/blobs/sha256:{SHA256_HEX}#fragment",
    ],
)
def test_blob_urls_dfdaemon_refuses(url):
    with pytest.raises(ValueError, match="refuses"):
        task_id_for_blob(url)


def test_host_peer_and_piece_ids():
    assert host_id("127.0.0.1", "localhost") == "127.0.0.1-localhost"
    assert host_id("127.0.0.1", "localhost", seed=True) == "127.0.0.1-localhost-seed"
    peer = peer_id("10.0.0.1", "node-a")
    assert peer.startswith("10.0.0.1-node-a-")
    assert uuid.UUID(peer.removeprefix("10.0.0.1-node-a-")).version == 4
    assert peer != peer_id("10.0.0.1", "node-a")
    seed = peer_id("10.0.0.1", "node-a", seed=True)
    assert seed.endswith("-seed")
    assert uuid.UUID(seed.removeprefix("10.0.0.1-node-a-").removesuffix("-seed")).version == 4
    assert piece_id(SHA256_HEX, 7) == f"{SHA256_HEX}-7"
