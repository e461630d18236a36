from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfagent.config import Config, dump, load, parse
from dfagent.configload import to_plain
from dfagent.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config" / "dfagent.yaml"


def key_paths(data: object, prefix: str = "") -> set[str]:
    if isinstance(data, dict):
        paths = set()
        for key, value in data.items():
            paths |= key_paths(value, f"{prefix}.{key}" if prefix else key)
        return paths
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return key_paths(data[0], prefix + "[]")
    return {prefix}


def test_example_documents_every_key_with_its_default():
    documented = yaml.safe_load(EXAMPLE.read_text())
    assert key_paths(documented) == key_paths(to_plain(Config()))
    example = load(EXAMPLE)
    defaults = Config()
    assert dataclasses.replace(example, storage=defaults.storage) == defaults
    assert example.storage.quota == defaults.storage.quota
    assert example.storage.piece_size == defaults.storage.piece_size


def test_dump_round_trips():
    config = parse(
        "proxy: {listen: '[::1]:5001', rules: [{regex: x, use_tls: true, redirect: 'r:1'}]}\n"
        "storage: {quota: 3GiB, piece_size: 4MiB, dir: /d}\norigin: {read_timeout: 90s}\n"
    )
    assert parse(dump(config)) == config


def test_defaults_are_dragonfly_ports_and_loopback_proxy():
    config = Config()
    assert str(config.proxy.listen) == "127.0.0.1:4001"
    assert config.metrics.listen.port == 4002
    assert config.health.listen.port == 4003
    assert config.storage.piece_size == 1024 * 1024


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return dict(info.value.problems)


def test_every_problem_is_reported_with_its_path():
    found = problems(
        "proxy:\n  listne: 1\n  rules: [{regex: '('}, {regex: ok, use_tls: maybe}]\n"
        "storage: {piece_size: 3MiB, quota: lots}\norigin: {retries: -1}\nextra: 1\n"
    )
    assert "unknown key" in found["proxy.listne"]
    assert "regular expression" in found["proxy.rules[0].regex"]
    assert "true or false" in found["proxy.rules[1].use_tls"]
    assert "size" in found["storage.quota"]
    assert "unknown key" in found["extra"]
    assert "0 to 10" in found["origin.retries"]


def test_range_and_type_errors_of_one_section_are_all_reported():
    found = problems(
        "storage:\n  piece_size: 3MiB\n  high_watermark: 1.5\n  quota: lots\n"
        "origin:\n  retries: -1\n"
    )
    assert "power of two" in found["storage.piece_size"]
    assert found["storage.high_watermark"] == "must be > 0 and <= 1, got 1.5"
    assert "size" in found["storage.quota"]
    assert "0 to 10" in found["origin.retries"]
    assert "storage.low_watermark" not in found, "0.7 is fine on its own"
    assert len(found) == 4, found


def test_a_cross_field_conflict_names_both_fields():
    found = problems("storage: {low_watermark: 0.95, high_watermark: 0.9}")
    assert found == {"storage.low_watermark": "must be below high_watermark (0.9), got 0.95"}


@pytest.mark.parametrize(
    "text",
    [
        "storage: {piece_size: lots, quota: 512KiB}",  # the piece size is unknown
        "storage: {piece_size: 3MiB, quota: 2MiB}",  # the piece size is out of its own range
    ],
)
def test_no_cross_field_conflict_with_a_field_that_is_already_wrong(text):
    assert list(problems(text)) == ["storage.piece_size"]


@pytest.mark.parametrize(
    ("text", "path", "reason"),
    [
        ("storage: {piece_size: 3MiB}", "storage.piece_size", "power of two"),
        ("storage: {piece_size: 128MiB}", "storage.piece_size", "64MiB"),
        ("storage: {quota: 1KiB}", "storage.quota", "at least one piece"),
        ("proxy: {listen: 4001}", "proxy.listen", "host:port"),
        ("proxy: {registry_mirror: docker.io}", "proxy.registry_mirror", "URL"),
        ("proxy: {registry_mirror: 'https://u:p@reg'}", "proxy.registry_mirror", "credentials"),
        ("proxy: {registry_mirror: 'http://[::1'}", "proxy.registry_mirror", "not a URL"),
        ("proxy: {registry_mirror: 'http://reg:99999'}", "proxy.registry_mirror", "not a URL"),
        ("origin: {connect_timeout: 0s}", "origin.connect_timeout", "positive"),
        ("origin: {prefetch_bandwidth: 1KiB}", "origin.prefetch_bandwidth", "at least 64KiB"),
        ("log: {level: loud}", "log.level", "one of"),
        ("proxy: [1, 2]", "proxy", "mapping"),
        ("- a\n- b", "<top>", "mapping"),
        ("proxy: {rules: [{redirect: x}]}", "proxy.rules[0].regex", "missing"),
        ("storage: {low_watermark: 0}", "storage.low_watermark", "> 0"),
        ("proxy: {idle_timeout: 0s}", "proxy.idle_timeout", "positive"),
        ("proxy: {tunnel_idle_timeout: 0s}", "proxy.tunnel_idle_timeout", "positive"),
        ("storage: {gc_interval: .nan}", "storage.gc_interval", "finite duration"),
        ("storage: {max_age: .inf}", "storage.max_age", "finite duration"),
        (
            f"storage: {{gc_interval: {'9' * 400}}}",
            "storage.gc_interval",
            "too large for a duration",
        ),
        (f"storage: {{gc_interval: {'9' * 400}s}}", "storage.gc_interval", "finite duration"),
        ("storage: {high_watermark: .nan}", "storage.high_watermark", "finite number"),
        (f"storage: {{high_watermark: {'9' * 400}}}", "storage.high_watermark", "too large"),
        (f"storage: {{quota: {'9' * 400}TiB}}", "storage.quota", "too large"),
        (f"storage: {{quota: {'9' * 400}}}", "storage.quota", "too large"),
        ('storage: {dir: "/var/cache/a\\0b"}', "storage.dir", "NUL"),
        ("proxy: {rules: [{regex: x, redirect: 'host:99999'}]}", "proxy.rules[0].redirect", "host"),
        ("proxy: {rules: [{regex: x, redirect: 'host:x'}]}", "proxy.rules[0].redirect", "host"),
        ("proxy: {rules: [{regex: x, redirect: '[::1'}]}", "proxy.rules[0].redirect", "host"),
        ("proxy: {listen: '[zz]:1'}", "proxy.listen", "not an IPv6 address"),
        ("proxy: {listen: '127.0.0.1:\u0663'}", "proxy.listen", "host:port"),  # Arabic 3
        ('swarm: {peers: ["a\\0b:1"]}', "swarm.peers[0]", "NUL"),
    ],
)
def test_single_problems(text, path, reason):
    found = problems(text)
    assert reason in found[path], found


@pytest.mark.parametrize(
    "text",
    [
        f"a: {'[' * 5000}{']' * 5000}",  # deeper than Python recurses
        f"storage: {{quota: {'1' * 5000}}}",  # an int past Python's 4300 digits
    ],
)
def test_yaml_that_cannot_be_loaded_is_a_file_problem(text):
    assert list(problems(text)) == ["<file>"]


def test_empty_file_is_the_default():
    assert parse("") == Config()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfagent", *args], capture_output=True, text=True, timeout=60
    )


def test_config_check_prints_effective_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("storage: {quota: 1GiB}\n")
    result = run_cli("config", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert parse(result.stdout).storage.quota == 2**30
    assert "quota: 1GiB" in result.stdout


def test_config_check_lists_errors_and_exits_2(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "storage: {piece_size: 3MiB, high_watermark: 1.5, quota: lots}\n"
        "origin: {retries: -1}\nproxy: {bogus: 1}\n"
    )
    result = run_cli("config", "check", str(path))
    assert result.returncode == 2
    for key in ("storage.piece_size", "storage.high_watermark", "storage.quota"):
        assert f"  {key}: " in result.stderr
    assert "origin.retries: must be from 0 to 10" in result.stderr
    assert "proxy.bogus: unknown key" in result.stderr
    assert "low_watermark" not in result.stderr
    missing = run_cli("config", "check", str(tmp_path / "absent.yaml"))
    assert missing.returncode == 2
    assert "cannot read" in missing.stderr
