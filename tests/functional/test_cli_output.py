"""status, gc and verify: found without --config, a summary for people, JSON with --json."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfagent.tools.locate import DEFAULT_CONFIG
from tests.functional.test_storage import PIECE, SMALL_PIECES, blob_url, status
from tests.support.agent import AgentProcess
from tests.support.client import send
from tests.support.metrics import wait_for
from tests.support.registry import Registry


def without_config(*args: str, config) -> subprocess.CompletedProcess[str]:
    """`dfagent ARGS` with no --config, the agent's config named by $DFAGENT_CONFIG only."""
    return subprocess.run(
        [sys.executable, "-m", "dfagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"DFAGENT_CONFIG": str(config)},
    )


def test_dfagent_config_names_the_agent_for_every_command(agent):
    shown = without_config("status", config=agent.config_path)
    assert shown.returncode == 0, shown.stderr
    assert f"agent    running, pid {agent.process.pid}" in shown.stdout
    assert f"storage  {agent.storage_dir}" in shown.stdout
    collected = without_config("gc", config=agent.config_path)
    assert collected.returncode == 0, collected.stderr
    assert collected.stdout.startswith("evicted 0 blobs")
    checked = without_config("verify", config=agent.config_path)
    assert checked.returncode == 0, checked.stderr
    assert "every piece matches" in checked.stdout


def as_a_user(*args: str, cache_home: Path) -> subprocess.CompletedProcess[str]:
    """`dfagent ARGS` with no config anywhere, as a user whose default storage.dir is under
    `cache_home` (not root's /var/cache/dfagent, which this machine may be using)."""
    if shutil.which("unshare") is None or DEFAULT_CONFIG.exists():
        pytest.skip(f"needs unshare, and no {DEFAULT_CONFIG} on this machine")
    env = {k: v for k, v in os.environ.items() if k != "DFAGENT_CONFIG"}
    return subprocess.run(
        ["unshare", "--user", sys.executable, "-m", "dfagent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env | {"XDG_CACHE_HOME": str(cache_home)},
    )


def test_without_any_config_the_default_storage_dir_is_asked(tmp_path):
    default_dir = tmp_path / "dfagent"
    nothing = as_a_user("status", cache_home=tmp_path)
    assert nothing.returncode == 1
    assert "Traceback" not in nothing.stderr
    (line,) = nothing.stderr.strip().splitlines()
    assert line == (
        f"dfagent status: no agent runs and no cache is at {default_dir} (storage.dir of the "
        f"embedded default config; looked at $DFAGENT_CONFIG (unset), {DEFAULT_CONFIG} "
        "(absent)): give the agent's config with -c FILE or $DFAGENT_CONFIG"
    )

    agent = AgentProcess(tmp_path / "agent", {"storage": {"dir": str(default_dir)}}).start()
    try:
        found = as_a_user("status", cache_home=tmp_path)
        assert found.returncode == 0, found.stderr
        assert f"agent    running, pid {agent.process.pid}" in found.stdout
    finally:
        agent.stop()


def test_no_agent_found_says_where_it_looked(tmp_path):
    config = tmp_path / "dfagent.yaml"
    config.write_text(yaml.safe_dump({"storage": {"dir": str(tmp_path / "no-cache")}}))
    for command in ("status", "gc", "verify"):
        found = without_config(command, config=config)
        assert found.returncode == 1
        assert "Traceback" not in found.stderr
        (line,) = found.stderr.strip().splitlines()
        assert f"no cache is at {tmp_path / 'no-cache'} (storage.dir of {config})" in line


def test_gc_and_verify_summaries_and_json(agent_factory, origin, registry: Registry):
    agent = agent_factory(**SMALL_PIECES)
    data = os.urandom(3 * PIECE)
    digest = registry.push_blob("test/summary", data)
    assert send(agent.proxy_port, blob_url(origin, "test/summary", digest)).body == data
    wait_for(lambda: status(agent)["verified_blobs"] == 1, "verification")

    collected = agent.cli("gc")
    assert collected.returncode == 0, collected.stderr
    assert collected.stdout.strip() == (
        "evicted 0 blobs (0 unread for storage.max_age, 0 over the quota), freed 0 B; "
        "768.0 KiB stored"
    )
    as_json = json.loads(agent.cli("gc", "--json").stdout)
    assert as_json["stored"] == len(data) and as_json["freed"] == 0

    good = agent.cli("verify")
    assert good.returncode == 0, good.stderr
    assert good.stdout.startswith("checked 3 pieces (768.0 KiB) in ")
    assert good.stdout.strip().endswith("every piece matches its sha256")

    agent.flip_stored_bit(digest, PIECE + 10)
    bad = agent.cli("verify")
    assert bad.returncode == 1
    lines = bad.stdout.strip().splitlines()
    assert lines[0].endswith("1 corrupt (dfagent verify --repair drops them)")
    assert lines[1:] == [f"  {digest[:19]}…  piece 1"]
    repaired = agent.cli("verify", "--repair", "--json")
    assert repaired.returncode == 1
    report = json.loads(repaired.stdout)
    assert report["bad"] == [{"digest": digest, "piece": 1}] and report["repaired"] is True
    assert agent.cli("verify").returncode == 0, "the corrupt piece was dropped"
