"""Every cache the Helm chart offers, made as kubelet makes it, with the real agent started in it
as the chart runs it: the agent starts, caches a blob, and its cache is its own and owner-only.

kubelet makes an emptyDir root's with mode 0777 and, for fsGroup, changes only its group and
adds setgid (root:65532 2777); a hostPath DirectoryOrCreate is root's, 0755, and fsGroup does not
apply. What the test takes from `helm template` is the pod's: the cache volume and where it is
mounted, the agent's storage section (storage.dir), each container's user, groups and
capabilities, and the init containers' commands. It runs those commands and the agent through
`setpriv` with the container's identity, so neither may chmod or write what it does not own.
A temporary directory stands for the volume: container paths under the mount map onto it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.counting import CountingOrigin
from tests.support.metrics import wait_for
from tests.support.registry import Registry
from tests.support.tools import require

pytestmark = [
    pytest.mark.slow,  # helm
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("setpriv") is None,
        reason="needs root and setpriv (util-linux) to make kubelet's directories and to run "
        "the agent as the chart's user",
    ),
]

CHART = Path(__file__).parents[2] / "charts" / "dfagent"
# What a container keeps without `drop: [ALL]` (containerd's and CRI-O's default set).
RUNTIME_DEFAULT_CAPS = {
    "CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
    "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE",
}  # fmt: skip


def render(*values: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The DaemonSet's pod spec and the agent config in the ConfigMap, as helm renders them."""
    args = [require("helm"), "template", "dfagent", str(CHART), "--namespace", "infra"]
    for value in values:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    objects = {o["kind"]: o for o in yaml.safe_load_all(out) if o}
    pod = objects["DaemonSet"]["spec"]["template"]["spec"]
    return pod, yaml.safe_load(objects["ConfigMap"]["data"]["dfagent.yaml"])


def as_container(pod: dict[str, Any], container: dict[str, Any]) -> tuple[int, list[str]]:
    """`container`'s uid, and `setpriv` arguments for a process with its user, groups and
    capabilities."""
    pod_context = pod.get("securityContext", {})
    context = container.get("securityContext", {})
    uid = context.get("runAsUser", pod_context.get("runAsUser"))
    gid = context.get("runAsGroup", pod_context.get("runAsGroup"))
    assert uid is not None and gid is not None, f"{container['name']}: the image decides its user"
    groups = [gid, *([pod_context["fsGroup"]] if "fsGroup" in pod_context else [])]
    groups += pod_context.get("supplementalGroups", [])
    capabilities = context.get("capabilities", {})
    drop = set(capabilities.get("drop", []))
    kept = (set() if "ALL" in drop else RUNTIME_DEFAULT_CAPS - drop) | set(
        capabilities.get("add", [])
    )
    bounding = ",".join(["-all", *(f"+{cap.lower()}" for cap in sorted(kept))])
    args = [
        "setpriv", f"--reuid={uid}", f"--regid={gid}",
        f"--groups={','.join(map(str, dict.fromkeys(groups)))}",
        "--inh-caps=-all", f"--bounding-set={bounding}",
    ]  # fmt: skip
    if context.get("allowPrivilegeEscalation") is False:
        args.append("--no-new-privs")
    return uid, args


def cache_mount(container: dict[str, Any]) -> PurePosixPath:
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == "cache"]
    return PurePosixPath(path)


def make_volume(pod: dict[str, Any], path: Path) -> None:
    """The cache volume's directory, as kubelet makes it for this pod."""
    (volume,) = [v for v in pod["volumes"] if v["name"] == "cache"]
    if "emptyDir" in volume:
        path.mkdir()
        path.chmod(0o777)
        fs_group = pod.get("securityContext", {}).get("fsGroup")
        if fs_group is not None:  # kubelet's SetVolumeOwnership: group, g+rwx, setgid
            os.chown(path, -1, fs_group)
            path.chmod(0o777 | 0o070 | stat.S_ISGID)
    elif "hostPath" in volume:
        assert volume["hostPath"]["type"] == "DirectoryOrCreate", volume
        path.mkdir(0o755)
        path.chmod(0o755)  # whatever this process's umask
    else:
        raise AssertionError(f"a cache volume this test does not know: {volume}")


def run_init_containers(pod: dict[str, Any], volume: Path) -> None:
    """Each init container's command, as its user, with its mount of the cache mapped."""
    for init in pod.get("initContainers", []):
        command = [*init.get("command", []), *init.get("args", [])]
        command = [part.replace(str(cache_mount(init)), str(volume)) for part in command]
        done = subprocess.run(
            [*as_container(pod, init)[1], *command], capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 0, f"init container {init['name']}: {done.stderr}"


def owned_and_private(cache: Path, uid: int) -> set[str]:
    """The names in `cache`, after checking that `uid` owns each and that directories are 0700
    and files 0600."""
    seen = set()
    for path in (cache, *cache.rglob("*")):
        info = os.lstat(path)
        seen.add(path.name)
        assert info.st_uid == uid, f"{path} is uid {info.st_uid}'s"
        expected = 0o700 if stat.S_ISDIR(info.st_mode) else 0o600
        # setgid, which an fsGroup volume's directories pass on, gives no one access
        assert info.st_mode & 0o777 == expected, f"{path} is {oct(stat.S_IMODE(info.st_mode))}"
    return seen


@pytest.mark.parametrize("values", [[], ["cache.type=hostPath"]], ids=["emptyDir", "hostPath"])
def test_every_chart_cache_starts_the_agent_as_its_user_with_a_private_cache(
    values: list[str], open_dir: Path, origin: CountingOrigin, registry: Registry
) -> None:
    pod, config = render(*values)
    (container,) = [c for c in pod["containers"] if c["name"] == "dfagent"]
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    assert context.get("runAsNonRoot") is True, "the agent may run as root"
    uid, agent_user = as_container(pod, container)
    assert uid != 0, "the agent runs as root"

    volume = open_dir / "volume"
    make_volume(pod, volume)
    mount = cache_mount(container)
    storage_dir = PurePosixPath(config["storage"]["dir"])
    assert storage_dir.is_relative_to(mount), f"storage.dir {storage_dir} is not under {mount}"
    cache = volume / storage_dir.relative_to(mount)

    storage = {**config["storage"], "dir": str(cache)}
    agent = AgentProcess(open_dir / "agent", {"storage": storage}, command_prefix=agent_user)

    def as_agent(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*agent_user, sys.executable, "-m", "dfagent", *args, "--config",
             str(agent.config_path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    run_init_containers(pod, volume)
    agent.start()
    try:
        with urllib.request.urlopen(f"{agent.health_url}/healthy", timeout=10) as health:
            assert health.status == 200
        data = os.urandom(200_000)
        digest = registry.push_blob("test/chart-cache", data)
        reply = send(agent.proxy_port, f"{origin.url}/v2/test/chart-cache/blobs/{digest}")
        assert reply.body == data

        def verified() -> bool:
            status = as_agent("status", "--json")
            assert status.returncode == 0, status.stderr
            return json.loads(status.stdout)["verified_blobs"] == 1

        wait_for(verified, "the blob to be verified")
        assert agent.stop() == 0, agent.log()
    finally:
        agent.kill()

    run_init_containers(pod, volume)  # the pod starts again on the same volume
    agent.start()
    try:
        status = as_agent("status", "--json")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["verified_blobs"] == 1
        assert agent.stop() == 0, agent.log()
    finally:
        agent.kill()

    hexd = digest.removeprefix("sha256:")
    assert {"index.sqlite", "lock", "blobs", "tmp", hexd[:2], hexd} <= owned_and_private(cache, uid)
    assert "made it owner-only" not in agent.log(), "the cache was private from the start"
