"""The Helm chart, rendered by the real helm and checked against the Kubernetes schemas and
against dfagent itself (its rendered config must pass `dfagent config check`)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml

from dfagent.metrics import Metrics
from tests.support.tools import require

pytestmark = pytest.mark.slow

CHART = Path(__file__).parents[2] / "charts" / "dfagent"
KUBERNETES_VERSION = "1.30.0"
CUSTOM_RESOURCES = {"ServiceMonitor", "PrometheusRule", "Certificate"}  # not core kinds


@pytest.fixture(scope="module")
def helm() -> str:
    return require("helm")


def render(helm: str, *values: str) -> dict[str, dict]:
    args = [helm, "template", "dfagent", str(CHART), "--namespace", "infra"]
    for value in values:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return {f"{o['kind']}/{o['metadata']['name']}": o for o in objects}


VALUE_SETS = {
    "defaults": [],
    "hostpath-and-monitoring": [
        "cache.type=hostPath",
        "cache.hostPath=/data/dfagent",
        "token.existingSecret=cluster-token",
        "metrics.serviceMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
        "config.proxy.listen=127.0.0.1:5001",
        "config.health.listen=0.0.0.0:5003",
        "config.peer.listen=0.0.0.0:5000",
        "config.storage.quota=100GiB",
        "config.proxy.rules[0].regex=blobs/sha256.*",
        "config.proxy.rules[0].use_tls=true",
    ],
    "mtls-by-cert-manager": [
        "tls.certManager.enabled=true",
        "tls.certManager.issuerRef.name=cluster-ca",
    ],
}


def test_lint(helm):
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_is_valid_kubernetes(helm, name):
    objects = render(helm, *VALUE_SETS[name])
    for key, obj in objects.items():
        if obj["kind"] in CUSTOM_RESOURCES:
            assert obj["apiVersion"] in ("monitoring.coreos.com/v1", "cert-manager.io/v1"), key
            continue
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def checked_config(objects: dict[str, dict], tmp_path: Path) -> dict:
    """The agent config the chart's ConfigMap holds, as `dfagent config check` reads it."""
    path = tmp_path / "dfagent.yaml"
    path.write_text(objects["ConfigMap/dfagent"]["data"]["dfagent.yaml"])
    checked = subprocess.run(
        [sys.executable, "-m", "dfagent", "config", "check", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    return yaml.safe_load(checked.stdout)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_daemonset_matches_the_agent_config(helm, name, tmp_path):
    objects = render(helm, *VALUE_SETS[name])
    config = checked_config(objects, tmp_path)

    pod = objects["DaemonSet/dfagent"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in pod["tolerations"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for name_, key in (
        ("proxy", "proxy"),
        ("health", "health"),
        ("metrics", "metrics"),
        ("peer", "peer"),
    ):
        assert ports[name_] == int(config[key]["listen"].rsplit(":", 1)[1]), name_
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthy", "port": "health"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthy"
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert config["swarm"]["dns"] == "dfagent-peers.infra.svc.cluster.local"
    assert objects["Service/dfagent-peers"]["spec"]["clusterIP"] == "None"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # storage.dir is the agent's own directory inside the volume, whose top is kubelet's
    storage_dir = PurePosixPath(config["storage"]["dir"])
    assert storage_dir.is_relative_to(mounts["cache"]) and str(storage_dir) != mounts["cache"]
    assert config["peer"]["token_file"].startswith(mounts["token"])


def test_token_secret_is_generated_once_or_taken_from_an_existing_one(helm):
    objects = render(helm)
    token = base64.b64decode(objects["Secret/dfagent-token"]["data"]["token"])
    assert len(token) == 48
    assert (
        objects["Secret/dfagent-token"]["metadata"]["annotations"]["helm.sh/resource-policy"]
        == "keep"
    )
    existing = render(helm, "token.existingSecret=cluster-token")
    assert not [k for k in existing if k.startswith("Secret/")]
    volumes = existing["DaemonSet/dfagent"]["spec"]["template"]["spec"]["volumes"]
    assert {
        "name": "token",
        "secret": {"secretName": "cluster-token", "defaultMode": 0o400},
    } in volumes


def test_the_agent_never_runs_as_root_and_only_a_hostpath_cache_has_a_root_init_container(helm):
    """kubelet makes a hostPath directory root's, 0755, and fsGroup does not apply to it: an
    init container, root with CAP_CHOWN alone, gives the agent storage.dir there. An emptyDir
    (2777 with fsGroup) needs none. tests/functional/test_chart_storage.py starts the agent."""
    default_pod = render(helm)["DaemonSet/dfagent"]["spec"]["template"]["spec"]
    host_objects = render(helm, "cache.type=hostPath")
    host_pod = host_objects["DaemonSet/dfagent"]["spec"]["template"]["spec"]
    for pod in (default_pod, host_pod):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 65532
        (container,) = pod["containers"]
        assert "runAsUser" not in container["securityContext"]
        assert "runAsNonRoot" not in container["securityContext"]
    assert "initContainers" not in default_pod
    (init,) = host_pod["initContainers"]
    assert init["securityContext"]["runAsUser"] == 0
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    config = yaml.safe_load(host_objects["ConfigMap/dfagent"]["data"]["dfagent.yaml"])
    assert init["command"][-1] == config["storage"]["dir"]
    assert {
        "name": "cache",
        "hostPath": {"path": "/var/cache/dfagent", "type": "DirectoryOrCreate"},
    } in host_pod["volumes"]


def test_schema_refuses_bad_values(helm):
    result = subprocess.run(
        [helm, "template", "dfagent", str(CHART), "--set", "cache.type=nfs"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode != 0
    assert "cache.type" in result.stderr or "cache/type" in result.stderr


def render_notes(helm: str, tmp_path: Path, *values: str) -> str:
    # Helm renders NOTES.txt only on install, which needs a cluster: render a copy instead.
    chart = shutil.copytree(CHART, tmp_path / "dfagent")
    notes = (chart / "templates" / "NOTES.txt").read_text()
    indented = "".join(f"    {line}\n" for line in notes.splitlines())
    preview = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
    (chart / "templates" / "notes-preview.yaml").write_text(preview + indented)
    settings = [arg for value in values for arg in ("--set", value)]
    result = subprocess.run(
        [helm, "template", "dfagent", str(chart), "--namespace", "infra",
         "--show-only", "templates/notes-preview.yaml", *settings],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["data"]["notes"]


def test_notes_print_the_nydusd_proxy_config(helm, tmp_path):
    rendered = render_notes(helm, tmp_path)
    assert '"url": "http://127.0.0.1:4001"' in rendered
    assert '"ping_url": "http://127.0.0.1:4003/healthy"' in rendered
    assert "/etc/nydus/certs.d" not in rendered, "the snapshotter's mirror is mirror mode's"
    # containerd pulls through dfagent too, so that every chunk nydusd reads is proven
    assert "/etc/containerd/certs.d/<registry host>/hosts.toml" in rendered


def test_notes_print_the_snapshotter_hosts_toml_in_mirror_mode(helm, tmp_path):
    rendered = render_notes(
        helm,
        tmp_path,
        "snapshotter.mode=mirror",
        "config.proxy.registry_mirror=https://registry.example.com:5000",
        "config.proxy.listen=127.0.0.1:4101",
    )
    assert "/etc/nydus/certs.d/registry.example.com_5000_/hosts.toml" in rendered
    assert 'server = "https://registry.example.com:5000"' in rendered
    assert '[host."http://127.0.0.1:4101"]' in rendered
    assert 'ping_url = "http://127.0.0.1:4003/healthy"' in rendered
    assert "that one registry only" in rendered
    assert '"proxy": {' not in rendered


def test_mtls_material_from_cert_manager_or_an_existing_secret(helm, tmp_path):
    issued = render(helm, "tls.certManager.enabled=true", "tls.certManager.issuerRef.name=ca")
    certificate = issued["Certificate/dfagent-tls"]["spec"]
    assert certificate["secretName"] == "dfagent-tls"
    assert set(certificate["usages"]) == {"server auth", "client auth"}
    existing = render(helm, "tls.existingSecret=peer-tls")
    assert not [k for k in existing if k.startswith("Certificate/")]
    for objects, secret in ((issued, "dfagent-tls"), (existing, "peer-tls")):
        config = yaml.safe_load(objects["ConfigMap/dfagent"]["data"]["dfagent.yaml"])
        assert config["peer"]["tls"] == {
            "cert": "/etc/dfagent/tls/tls.crt",
            "key": "/etc/dfagent/tls/tls.key",
            "ca": "/etc/dfagent/tls/ca.crt",
        }
        pod = objects["DaemonSet/dfagent"]["spec"]["template"]["spec"]
        assert {"name": "tls", "secret": {"secretName": secret, "defaultMode": 0o400}} in pod[
            "volumes"
        ]
    without = yaml.safe_load(render(helm)["ConfigMap/dfagent"]["data"]["dfagent.yaml"])
    assert "tls" not in without["peer"]
    missing_issuer = subprocess.run(
        [helm, "template", "dfagent", str(CHART), "--set", "tls.certManager.enabled=true"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert missing_issuer.returncode != 0
    assert "tls.certManager.issuerRef.name" in missing_issuer.stderr


def test_dragonfly_mode_opens_dragonflys_ports_and_leaves_the_peers_service_alone(helm, tmp_path):
    objects = render(
        helm,
        "config.swarm.mode=dragonfly",
        "config.dragonfly.schedulers[0]=scheduler.dragonfly-system.svc:8002",
        "config.dragonfly.vortex=0.0.0.0:4105",
    )
    config = checked_config(objects, tmp_path)
    assert config["swarm"]["mode"] == "dragonfly" and config["swarm"]["dns"] is None
    (container,) = objects["DaemonSet/dfagent"]["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["upload"] == 4000 and ports["vortex"] == 4105
    assert "peer" not in ports
    for obj in objects.values():
        if obj["kind"] not in CUSTOM_RESOURCES:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_every_alert_asks_about_metrics_the_agent_exports(helm):
    """An alert on a metric the agent does not export would stay silent forever."""
    rule = render(helm, "metrics.prometheusRule.enabled=true")["PrometheusRule/dfagent"]
    exprs = [r["expr"] for group in rule["spec"]["groups"] for r in group["rules"]]
    asked = {
        re.sub(r"_(total|bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"\bdfagent_\w+", expr)
    }
    exported = {family.name for family in Metrics().registry.collect()}
    assert asked, exprs
    assert asked <= exported, sorted(asked - exported)
