from __future__ import annotations

import pytest

from dfagent.core.digest import Digest, InvalidDigest


def test_valid_digest_round_trips():
    text = "sha256:" + "0123456789abcdef" * 4
    assert str(Digest.parse(text)) == text
    assert Digest.parse(text).hex == "0123456789abcdef" * 4


@pytest.mark.parametrize(
    "text",
    [
        "",
        "sha256:",
        "sha256:" + "A" * 64,
        "sha256:" + "a" * 65,
        "sha512:" + "a" * 64,
        "sha256:../../etc/passwd",
        "sha256:" + "a" * 63 + "/",
        " sha256:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
    ],
)
def test_invalid_digest_is_refused(text):
    with pytest.raises(InvalidDigest, match="sha256:<64 lower-case hex>"):
        Digest.parse(text)
