"""The installer's decisions, with stand-in programs on a PATH of their own: what it reuses,
what it refuses, and the build commands it runs (no real build)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from tests.support import tools


@pytest.fixture
def bin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The only place programs are found."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.setattr(tools, "SEARCH_PATH", [directory])
    return directory


def _program(directory: Path, name: str, script: str) -> Path:
    path = directory / name
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(0o755)
    return path


def _printing(directory: Path, name: str, output: str) -> Path:
    return _program(directory, name, f"printf '%s\\n' {shlex.quote(output)}")


def _scheduler() -> tools.GoProgram:
    (program,) = [p for p in tools.GO_PROGRAMS if p.binary == "scheduler"]
    return program


@pytest.mark.parametrize(
    ("printed", "version"),
    [
        ("go version go1.25.5 linux/amd64", (1, 25, 5)),
        ("rustc 1.95.0 (f2d3ce0bd 2026-03-21)", (1, 95, 0)),
        ("v3.16+g1234", (3, 16)),
    ],
)
def test_version_reads_major_minor_and_patch(printed: str, version: tuple[int, ...]):
    assert tools._version([sys.executable, "-c", f"print({printed!r})"]) == version


def test_go_older_than_the_schedulers_go_mod_is_refused(bin_dir: Path):
    _printing(bin_dir, "go", "go version go1.25.4 linux/amd64")
    with pytest.raises(tools.SetupError, match=r"Go >= 1\.25\.5 .* has Go 1\.25\.4"):
        tools._require_go(_scheduler().go_minimum, "scheduler v2.5.1")
    _printing(bin_dir, "go", "go version go1.25.5 linux/amd64")
    assert tools._require_go(_scheduler().go_minimum, "scheduler v2.5.1") == str(bin_dir / "go")


def test_scheduler_is_reused_at_its_release_version_only(bin_dir: Path):
    """Releases (and this installer) stamp the tag; the module's source itself says v2.5.0."""
    assert not _scheduler().installed()
    _program(bin_dir, "scheduler", '[ "$1" = version ] && printf "GitVersion:\\tv2.5.0\\n"')
    assert not _scheduler().installed()
    _program(bin_dir, "scheduler", '[ "$1" = version ] && printf "GitVersion:\\tv2.5.1\\n"')
    assert _scheduler().installed()
    assert tools.require("scheduler") == str(bin_dir / "scheduler")


def test_scheduler_build_is_static_and_stamped(tmp_path: Path):
    command, env = _scheduler().build("go", tmp_path / "src", tmp_path / "out")
    assert command[:4] == ["go", "-C", str(tmp_path / "src"), "build"]
    assert command[-1] == "./cmd/scheduler"
    ldflags = command[command.index("-ldflags") + 1]
    assert "-X d7y.io/dragonfly/v2/version.GitVersion=v2.5.1" in ldflags
    assert env == {"CGO_ENABLED": "0"}
    (nerdctl,) = [p for p in tools.GO_PROGRAMS if p.binary == "nerdctl"]
    assert nerdctl.build("go", tmp_path, tmp_path / "out")[1] == {}


def test_dragonfly_client_build_installs_dfdaemon_and_dfget_only(tmp_path: Path):
    command, env = tools.dragonfly_client_build("cargo", tmp_path / "target")
    assert command[:5] == ["cargo", "install", "dragonfly-client", "--version", "1.5.10"]
    assert "--locked" in command
    binaries = [command[i + 1] for i, argument in enumerate(command) if argument == "--bin"]
    assert binaries == ["dfdaemon", "dfget"]
    assert command[command.index("--target-dir") + 1] == str(tmp_path / "target")
    assert env["CARGO_PROFILE_RELEASE_OPT_LEVEL"] == "1"


def _cargo_recording(directory: Path, record: Path) -> None:
    """A cargo that writes down its arguments and build profile, then fails."""
    _printing(directory, "rustc", "rustc 1.95.0 (f2d3ce0bd 2026-03-21)")
    _program(
        directory,
        "cargo",
        f'echo "$@" > {record}; echo "opt-level=$CARGO_PROFILE_RELEASE_OPT_LEVEL" >> {record}\n'
        "exit 1",
    )


def test_installed_dfdaemon_and_dfget_are_reused(bin_dir: Path, tmp_path: Path):
    record = tmp_path / "cargo-ran"
    _cargo_recording(bin_dir, record)
    _printing(bin_dir, "dfdaemon", "dfdaemon 1.5.10 (unknown, unknown)")
    _printing(bin_dir, "dfget", "dfget 1.5.10 (unknown, unknown)")
    tools.install_dragonfly_client()
    assert not record.exists()
    assert tools.require("dfget") == str(bin_dir / "dfget")


def test_dfget_of_another_version_makes_it_build_both(
    bin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    record = tmp_path / "cargo-ran"
    _cargo_recording(bin_dir, record)
    _printing(bin_dir, "dfdaemon", "dfdaemon 1.5.10 (unknown, unknown)")
    _printing(bin_dir, "dfget", "dfget 1.5.9 (unknown, unknown)")
    with pytest.raises(tools.SetupError, match="failed"):
        tools.install_dragonfly_client()
    arguments, profile = record.read_text().splitlines()
    assert arguments.startswith("install dragonfly-client --version 1.5.10 --locked")
    assert "--bin dfdaemon --bin dfget" in arguments
    assert profile == "opt-level=1"
    target = Path(arguments.split("--target-dir ")[1])
    assert not target.parent.exists()  # the scratch directory is gone
    step = capsys.readouterr().out
    assert "setup: building dfdaemon and dfget" in step
    assert " min on 2 cores" in step


def test_old_rust_is_refused_before_building_dfdaemon(bin_dir: Path, tmp_path: Path):
    record = tmp_path / "cargo-ran"
    _cargo_recording(bin_dir, record)
    _printing(bin_dir, "rustc", "rustc 1.87.0 (17067e9ac 2025-05-09)")
    with pytest.raises(tools.SetupError, match=r"Rust >= 1\.88 .* has Rust 1\.87\.0"):
        tools.install_dragonfly_client()
    assert not record.exists()
