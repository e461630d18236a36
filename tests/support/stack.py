"""A real container node on this machine: containerd (Debian) with nydus-snapshotter
(containerd-nydus-grpc) as a proxy snapshotter, each with its own root, sockets and configs,
driven with nerdctl. The snapshotter spawns nydusd (through a wrapper that adds
`--rlimit-nofile 0`) with the nydusd config the node is given.

Also: a small busybox root filesystem pushed to a registry as an OCI image, and its nydus
conversion (`nerdctl image convert --nydus --oci`, then pushed).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.processes import end
from tests.support.registry import Registry
from tests.support.tools import require

NAMESPACE = "stack"
NYDUS_BLOB = "application/vnd.oci.image.layer.nydus.blob.v1"
BUSYBOX_APPLETS = ("sh", "cat", "head", "ls", "true")


def stack_missing() -> str | None:
    """Why the stack cannot run here, or None."""
    if os.geteuid() != 0:
        return "containerd and nydus-snapshotter need root"
    if not Path("/dev/fuse").exists():
        return "nydusd needs /dev/fuse"
    return None


def busybox_layer(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar: static busybox with a few applets linked, plus `files`
    (paths relative to /)."""
    busybox = Path(require("busybox")).read_bytes()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = {"bin", "tmp", "proc", "sys", "dev", "etc"}
        directories |= {str(Path(p).parent) for p in files if str(Path(p).parent) != "."}
        for name in sorted(directories):
            entry = tarfile.TarInfo(name)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(entry)
        _add(tar, "bin/busybox", busybox, 0o755)
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
        for path, data in sorted(files.items()):
            _add(tar, path, data, 0o644)
    return out.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int) -> None:
    entry = tarfile.TarInfo(name)
    entry.size, entry.mode = len(data), mode
    tar.addfile(entry, io.BytesIO(data))


def push_oci_image(registry: Registry, repo: str, tag: str, layer: bytes) -> None:
    """One layer, uncompressed, with an image config that runs /bin/sh."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer).hexdigest()]},
    }
    registry.push_manifest(repo, tag, json.dumps(config).encode(), [layer])


@dataclass
class NydusImage:
    """A nydus image in the registry: its repository, tag, and the data blob nydusd reads."""

    repo: str
    tag: str
    blob_digest: str
    blob_size: int

    def reference(self, host: str) -> str:
        return f"{host}/{self.repo}:{self.tag}"


def nydus_blob(registry: Registry, repo: str, tag: str) -> tuple[str, int]:
    """The digest and size of the nydus data blob in `repo:tag`'s manifest."""
    request = urllib.request.Request(
        f"{registry.url}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        manifest = json.load(response)
    blobs = [layer for layer in manifest["layers"] if layer["mediaType"] == NYDUS_BLOB]
    assert len(blobs) == 1, manifest
    return blobs[0]["digest"], blobs[0]["size"]


def nydusd_proxy_config(proxy_url: str, ping_url: str, check_interval: int = 1) -> dict[str, Any]:
    """The nydusd JSON for the snapshotter's `nydusd_config` in proxy mode: blobs through
    dfagent, falling back to the registry, no prefetch (lazy)."""
    config = nydusd_base_config()
    config["device"]["backend"]["config"]["proxy"] = {
        "url": proxy_url,
        "ping_url": ping_url,
        "fallback": True,
        "check_interval": check_interval,
        "use_http": False,
    }
    return config


def nydusd_base_config() -> dict[str, Any]:
    """nydusd straight to the registry (the snapshotter fills in host, repo and auth)."""
    return {
        "device": {
            "backend": {
                "type": "registry",
                "config": {"timeout": 5, "connect_timeout": 5, "retry_limit": 2},
            },
            "cache": {"type": "blobcache", "config": {"work_dir": "/unused"}},
        },
        "mode": "direct",
        "digest_validate": False,
        "iostats_files": False,
        "enable_xattr": True,
        "fs_prefetch": {"enable": False},
    }


def mirrors_dir(root: Path, registry_host: str, mirror_url: str, ping_url: str) -> Path:
    """A hosts.toml tree naming `mirror_url` as the mirror of `registry_host` (`host:port`,
    whose directory the snapshotter calls `host_port_`), for its `[remote.mirrors_config]`."""
    directory = root / (registry_host.replace(":", "_") + "_")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(
        f'server = "http://{registry_host}"\n\n'
        f'[host."{mirror_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
        f'  ping_url = "{ping_url}"\n'
    )
    return root


def pull_hosts_dir(root: Path, registry_host: str, mirror_url: str) -> Path:
    """A containerd hosts directory (nerdctl's `hosts_dir`) naming `mirror_url` as the mirror
    containerd pulls `registry_host`'s images through (manifests, configs, layers)."""
    directory = root / registry_host
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts.toml").write_text(
        f'server = "http://{registry_host}"\n\n'
        f'[host."{mirror_url}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )
    return root


@dataclass
class Node:
    """containerd + nydus-snapshotter under `root`: `start()`, `nerdctl(...)`,
    `copy_out(...)`, and `stop()`, which leaves nothing running or mounted."""

    root: Path  # configs and logs
    nydusd_config: dict[str, Any] = field(default_factory=nydusd_base_config)
    mirrors: Path | None = None
    pull_hosts: Path | None = None  # containerd pulls through the mirrors named there
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Sockets and the snapshotter's root: a short path (the snapshotter refuses a root longer
    # than 70 bytes), removed by stop().
    state: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dfagent-node-")))

    @property
    def containerd_socket(self) -> Path:
        return self.state / "containerd.sock"

    @property
    def snapshotter_socket(self) -> Path:
        return self.state / "nydus.sock"

    @property
    def snapshotter_root(self) -> Path:
        return self.state / "snapshotter"

    def start(self) -> Node:
        self.root.mkdir(parents=True, exist_ok=True)
        self._write_configs()
        self._spawn(
            "snapshotter",
            [require("containerd-nydus-grpc"), "--config", str(self.root / "snapshotter.toml")],
        )
        _wait_for(self.snapshotter_socket.exists, "the snapshotter's socket", self.processes)
        self._spawn(
            "containerd", [require("containerd"), "--config", str(self.root / "containerd.toml")]
        )
        _wait_for(self.containerd_socket.exists, "containerd's socket", self.processes)
        self._wait_snapshotter_through_containerd()
        return self

    def _write_configs(self) -> None:
        wrapper = self.root / "nydusd"
        wrapper.write_text(f'#!/bin/sh\nexec {require("nydusd")} "$@" --rlimit-nofile 0\n')
        wrapper.chmod(0o755)
        (self.root / "nydusd.json").write_text(json.dumps(self.nydusd_config, indent=2))
        mirrors = f'\n[remote.mirrors_config]\ndir = "{self.mirrors}"\n' if self.mirrors else ""
        (self.root / "snapshotter.toml").write_text(
            f"""version = 1
root = "{self.snapshotter_root}"
address = "{self.snapshotter_socket}"
daemon_mode = "dedicated"
cleanup_on_close = true

[system]
enable = false

[daemon]
nydusd_config = "{self.root / "nydusd.json"}"
nydusd_path = "{wrapper}"
nydusimage_path = "{require("nydus-image")}"
fs_driver = "fusedev"
recover_policy = "none"
threads_number = 4

[cgroup]
enable = false

[log]
log_to_stdout = true
level = "info"

[metrics]
address = ""
{mirrors}"""
        )
        # The CRI plugin off at top level: below a [table] the line would be silently ignored.
        (self.root / "containerd.toml").write_text(
            f"""version = 2
disabled_plugins = ["io.containerd.grpc.v1.cri"]
root = "{self.state / "containerd-root"}"
state = "{self.state / "containerd-state"}"

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.state / "containerd.sock.ttrpc"}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{self.state / "opt"}"

[proxy_plugins.nydus]
  type = "snapshot"
  address = "{self.snapshotter_socket}"
"""
        )
        (self.root / "nerdctl.toml").write_text(
            f'address = "{self.containerd_socket}"\nnamespace = "{NAMESPACE}"\n'
            f'data_root = "{self.root / "nerdctl"}"\ninsecure_registry = true\n'
            + (f'hosts_dir = ["{self.pull_hosts}"]\n' if self.pull_hosts else "")
        )

    def _spawn(self, name: str, command: list[str]) -> None:
        log = (self.root / f"{name}.log").open("ab")
        self.processes.append(
            subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        )

    def _wait_snapshotter_through_containerd(self) -> None:
        """A real call through containerd: after a failed dial containerd answers with the
        saved error for a while even once the socket is there."""
        ctr = [require("ctr"), "--address", str(self.containerd_socket), "-n", NAMESPACE]
        deadline = time.monotonic() + 30
        while True:
            probe = subprocess.run(
                [*ctr, "snapshots", "--snapshotter", "nydus", "ls"], capture_output=True, text=True
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the nydus snapshotter is not reachable: {probe.stderr}")
            time.sleep(0.2)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def nerdctl_env(self) -> dict[str, str]:
        """The environment that points nerdctl at this node's containerd."""
        return {**os.environ, "NERDCTL_TOML": str(self.root / "nerdctl.toml")}

    def nerdctl(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        result = subprocess.run(
            [require("nerdctl"), *args], capture_output=True, timeout=timeout, env=self.nerdctl_env
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"nerdctl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stderr.decode(errors='replace')}\n"
                f"snapshotter log:\n{self.log('snapshotter')[-3000:]}"
            )
        return result

    def copy_out(self, image: str, path: str) -> bytes:
        """The bytes of file `path` as a container of `image` reads them. Copied through a
        bind mount: nerdctl 1.7 can lose the tail of a container's standard output when the
        container exits at once."""
        out = Path(tempfile.mkdtemp(prefix="copy-", dir=self.root))
        self.nerdctl(
            "--snapshotter", "nydus", "run", "--rm", "--net", "none", "-v", f"{out}:/out",
            image, "sh", "-c", f"cat {path} > /out/copy",
        )  # fmt: skip
        return (out / "copy").read_bytes()

    def stop(self) -> None:
        """Stop containerd and the snapshotter, then every process still running from this
        node's root (nydusd, shims), and unmount what is left mounted under it."""
        for process in reversed(self.processes):
            end(process)
        self.processes.clear()
        for directory in (self.root, self.state):
            for pid in _pids_mentioning(str(directory)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for directory in (self.root, self.state):
            for mountpoint in sorted(_mounts_under(directory), key=len, reverse=True):
                subprocess.run(["umount", "-l", mountpoint], check=False, capture_output=True)
        shutil.rmtree(self.state, ignore_errors=True)


def _pids_mentioning(text: str) -> list[int]:
    """Processes whose command line names `text` (this node's own directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root) + "/"
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split(" ")[4].replace("\\040", " ")
        if mountpoint.startswith(prefix):
            mounts.append(mountpoint)
    return mounts


def _wait_for(
    condition: Callable[[], bool], what: str, processes: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{process.args[0]} exited {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def convert_and_push(
    work: Path, registry: Registry, repo: str, source_tag: str, nydus_tag: str
) -> NydusImage:
    """Pull `repo:source_tag` into a throwaway node, convert it with nerdctl to a nydus
    image (OCI media types) and push that as `repo:nydus_tag`."""
    node = Node(work).start()
    try:
        source = f"{registry.host}/{repo}:{source_tag}"
        target = f"{registry.host}/{repo}:{nydus_tag}"
        node.nerdctl("pull", "--unpack", "false", source)
        node.nerdctl(
            "image", "convert", "--nydus", "--oci",
            "--nydus-builder-path", require("nydus-image"),
            "--nydus-work-dir", str(work / "convert"),
            source, target,
        )  # fmt: skip
        node.nerdctl("push", target)
    finally:
        node.stop()
    digest, size = nydus_blob(registry, repo, nydus_tag)
    return NydusImage(repo, nydus_tag, digest, size)
