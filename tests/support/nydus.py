"""The real nydusd and nydus-image (cargo package nydus-rs), images built from test trees,
and FUSE mounts through a proxy or mirror config taken from config/."""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zstandard

from tests.support.tools import require

CONFIG_DIR = Path(__file__).parents[2] / "config"


def ensure_nydus() -> tuple[str, str]:
    """Paths of nydusd and nydus-image (installed by ./test.sh)."""
    return require("nydusd"), require("nydus-image")


def make_tree(root: Path, seed: int = 1, bulk: int = 0) -> Path:
    """Files small and large (several 1 MiB chunks), random and compressible, nested, a
    symlink and an empty file; plus `bulk` random 1 MiB files under data/."""
    rng = __import__("random").Random(seed)
    root.mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "etc" / "conf.d").mkdir(parents=True)
    (root / "bin" / "large-random").write_bytes(rng.randbytes(5 * 1024 * 1024 + 321))
    (root / "bin" / "large-text").write_bytes(b"all work and no play " * 200_000)
    for i in range(60):
        size = rng.choice([0, 1, 100, 4096, 70_000, 300_000])
        data = rng.randbytes(size) if i % 2 else (f"line {i}\n" * (size // 8 + 1)).encode()[:size]
        (root / "etc" / "conf.d" / f"file-{i:02d}").write_bytes(data)
    (root / "empty").write_bytes(b"")
    os.symlink("bin/large-text", root / "link-to-text")
    if bulk:
        (root / "data").mkdir()
        for i in range(bulk):
            (root / "data" / f"part-{i:03d}").write_bytes(rng.randbytes(1024 * 1024))
    return root


@dataclass
class Image:
    bootstrap: Path
    blobs: list[Path]


def build_image(
    source: Path,
    out: Path,
    fs_version: int = 6,
    *,
    compressor: str = "zstd",
    digester: str = "blake3",
) -> Image:
    """`nydus-image create` of `source` into `out` (bootstrap file and blob directory);
    `compressor` is zstd, lz4_block or none, `digester` blake3 or sha256."""
    _, nydus_image = ensure_nydus()
    blob_dir = out / "blobs"
    blob_dir.mkdir(parents=True)
    subprocess.run(
        [nydus_image, "create", "--fs-version", str(fs_version), "--compressor", compressor,
         "--digester", digester, "--bootstrap", str(out / "bootstrap"),
         "--blob-dir", str(blob_dir), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    return Image(out / "bootstrap", sorted(blob_dir.iterdir()))


def bootstrap_layer(bootstrap: Path, compression: str = "gzip") -> bytes:
    """The image layer a nydus converter makes of `bootstrap`: a tar holding the directory
    `image/` and the file `image/image.boot`, compressed with "gzip", "zstd" or "none"."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        directory = tarfile.TarInfo("image")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        data = bootstrap.read_bytes()
        member = tarfile.TarInfo("image/image.boot")
        member.size, member.mode = len(data), 0o444
        tar.addfile(member, io.BytesIO(data))
    match compression:
        case "gzip":
            return gzip.compress(out.getvalue(), mtime=0)
        case "zstd":
            return zstandard.ZstdCompressor().compress(out.getvalue())
        case "none":
            return out.getvalue()
    raise ValueError(f"unknown compression {compression!r}")


def nydusd_config(kind: str, **changes: Any) -> dict[str, Any]:
    """config/nydusd-<kind>.json with `changes` applied to its registry backend config."""
    config = json.loads((CONFIG_DIR / f"nydusd-{kind}.json").read_text())
    config = copy.deepcopy(config)
    backend = config["device"]["backend"]["config"]
    for key, value in changes.items():
        if key in ("digest_validate",):
            config[key] = value
        elif key == "work_dir":
            config["device"]["cache"]["config"]["work_dir"] = value
        elif isinstance(value, dict) and isinstance(backend.get(key), dict):
            backend[key].update(value)
        else:
            backend[key] = value
    return config


def nydusd_dragonfly_mirror(host: str, repo: str, mirror: str, registry: str, ping: str) -> dict:
    """nydusd reading `registry`'s `repo` through the mirror `mirror` (dfagent's proxy port),
    the registry named in Dragonfly's header; `host` is the registry's host:port."""
    config = nydusd_config("mirror", scheme="http", host=host, repo=repo)
    config["device"]["backend"]["config"]["mirrors"] = [
        {
            "host": mirror,
            "headers": {"X-Dragonfly-Registry": registry},
            "ping_url": ping,
            "health_check_interval": 1,
            "failure_limit": 5,
            # nydusd 2.2 sends only requests that carry credentials to a mirror, unless
            # auth_through is on; the test registries need none.
            "auth_through": True,
        }
    ]
    return config


class Mount:
    """nydusd serving an image at a FUSE mountpoint until closed."""

    def __init__(self, root: Path, bootstrap: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.mountpoint = root / "mnt"
        self.mountpoint.mkdir(parents=True)
        (root / "cache").mkdir()
        config["device"]["cache"]["config"]["work_dir"] = str(root / "cache")
        (root / "nydusd.json").write_text(json.dumps(config, indent=2))
        nydusd, _ = ensure_nydus()
        self.log = root / "nydusd.log"
        started = time.monotonic()
        self.process = subprocess.Popen(
            [nydusd, "--config", str(root / "nydusd.json"), "--mountpoint", str(self.mountpoint),
             "--bootstrap", str(bootstrap), "--log-level", "info", "--rlimit-nofile", "0"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        while not os.path.ismount(self.mountpoint):
            if self.process.poll() is not None:
                raise RuntimeError(f"nydusd exited:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() - started > 30:
                raise RuntimeError("nydusd did not mount")
            time.sleep(0.01)
        self.mount_seconds = time.monotonic() - started

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def compare_trees(source: Path, mounted: Path) -> int:
    """Assert that `mounted` holds exactly `source` (names, types, bytes, link targets);
    returns the bytes read."""
    read = 0
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        other = mounted / relative
        if path.is_symlink():
            assert other.is_symlink(), relative
            assert os.readlink(other) == os.readlink(path), relative
        elif path.is_dir():
            assert other.is_dir(), relative
        else:
            data = other.read_bytes()
            assert data == path.read_bytes(), f"{relative} differs"
            read += len(data)
    names = sorted(p.relative_to(mounted) for p in mounted.rglob("*"))
    assert names == sorted(p.relative_to(source) for p in source.rglob("*"))
    return read
