"""The task a seed member fetches for: named from the scheduler's request as dfdaemon names it."""

from __future__ import annotations

import pytest
from dragonfly_api import common_pb2

from dfagent.core.digest import Digest
from dfagent.dragonfly import DEFAULT_FILTERED_QUERY_PARAMS
from dfagent.swarm.dragonfly.seed import SeedError, task_id_of

DIGEST = "b2c366cce7e68013d5441c6326d5a3e1b12aeb5ed58564d0fd3fa089bc29cb6e"
URL = f"http://127.0.0.1:5000/v2/library/app/blobs/sha256:{DIGEST}"
BLOB = Digest(DIGEST)  # the blob the URL's path names, fetched and checked


def test_a_dfget_download_is_named_by_its_url():
    # dfget's request as the scheduler passes it on (the default filtered query keys), and
    # the id a real dfdaemon 1.5.10 gave that download (see test_dragonfly_ids.py)
    url = "http://127.0.0.1:18765/files/a.bin"
    download = common_pb2.Download(url=url, filtered_query_params=DEFAULT_FILTERED_QUERY_PARAMS)
    assert task_id_of(download, BLOB) == (
        "19dc9d9dc716c331b6fe65100d8ed86748aecc3bdc5c44a4aef0918f1fcc267b"
    )


def test_a_download_named_by_blob_digest_is_the_digest():
    download = common_pb2.Download(url=URL, enable_task_id_based_blob_digest=True)
    assert task_id_of(download, BLOB) == DIGEST


def test_tag_and_application_change_the_name():
    plain = task_id_of(common_pb2.Download(url=URL), BLOB)
    assert task_id_of(common_pb2.Download(url=URL, tag="t"), BLOB) != plain
    assert task_id_of(common_pb2.Download(url=URL, application="a"), BLOB) != plain


@pytest.mark.parametrize(
    "download",
    [
        common_pb2.Download(url=URL, piece_length=4 * 1024 * 1024),
        common_pb2.Download(url=URL, content_for_calculating_task_id="x"),
        common_pb2.Download(
            url="ftp://host/v2/a/blobs/sha256:" + DIGEST,
            filtered_query_params=DEFAULT_FILTERED_QUERY_PARAMS,
        ),
        common_pb2.Download(
            url="http://h/v2/a/blobs/sha256:short", enable_task_id_based_blob_digest=True
        ),
        # dfdaemon names these after the last `/blobs/` in the URL, not the blob fetched
        common_pb2.Download(
            url=f"{URL}?y=/v2/a/blobs/sha256:{'c' * 64}", enable_task_id_based_blob_digest=True
        ),
        common_pb2.Download(
            url=f"{URL}#/v2/a/blobs/sha256:{'c' * 64}", enable_task_id_based_blob_digest=True
        ),
    ],
)
def test_a_download_named_otherwise_is_refused(download):
    with pytest.raises(SeedError):
        task_id_of(download, BLOB)
