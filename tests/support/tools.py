"""The programs the tests and benchmarks run, and the one place that installs them.

`python3 -m tests.support.tools install [--quick]` (what `./test.sh` runs before any test)
installs every missing program: Debian packages with apt, nydusd and nydus-image with cargo,
helm with go, and the project itself into `.venv`. Each long step prints one line saying what
it does and about how long it takes; what is already installed is reused. An interrupted build
leaves nothing behind: its scratch space is a temporary directory removed on the way out.

The tests and benchmarks call `require(name)`: the path of an installed program, or an
error that says how to install it. Nothing is installed from inside a test. Standard library
only: this runs before the virtual environment exists.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).parents[2]
VENV = ROOT / ".venv"
_CARGO_BIN = Path(os.environ.get("CARGO_HOME") or Path.home() / ".cargo") / "bin"
_GO_BIN = Path(
    os.environ.get("GOBIN") or Path(os.environ.get("GOPATH") or Path.home() / "go") / "bin"
)
SEARCH_PATH = [_CARGO_BIN, _GO_BIN]  # where cargo and go install, also when not on PATH

NYDUS_VERSION = "2.2.0"
HELM_VERSION = "v3.16.3"
_RUST_MINIMUM = (1, 66)  # nydus-rs 2.2.0's rust-toolchain
_GO_MINIMUM = (1, 22)  # helm v3.16's go.mod
_RUSTUP = "curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y"


class SetupError(Exception):
    """A tool cannot be installed here; the message says what to do instead."""


@dataclass(frozen=True)
class Apt:
    binary: str
    package: str


# Debian packages: the real registry, htpasswd for its auth, and what the benchmarks drive.
APT = [
    Apt("docker-registry", "docker-registry"),
    Apt("htpasswd", "apache2-utils"),
    Apt("wrk", "wrk"),
    Apt("nginx", "nginx-light"),
    Apt("ip", "iproute2"),
    Apt("tc", "iproute2"),
]
QUICK_APT = {"docker-registry", "htpasswd"}  # all the quick suite (-m "not slow") starts


def find(name: str) -> str | None:
    """The path of program `name` on PATH or where cargo and go install, else None."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *map(str, SEARCH_PATH)])
    return shutil.which(name, path=path)


class MissingTool(Exception):
    """A program the tests need is not installed; the message names the command that does."""


def require(name: str) -> str:
    """The path of `name`, or MissingTool naming the command that installs it."""
    path = find(name)
    if path is None:
        raise MissingTool(
            f"{name} is not installed: ./test.sh installs it before the tests start "
            "(or: python3 -m tests.support.tools install)"
        )
    return path


def _step(what: str, expected: str) -> float:
    print(f"setup: {what}, {expected}", flush=True)
    return time.monotonic()


def _done(started: float) -> None:
    print(f"setup:   done in {time.monotonic() - started:.0f} s", flush=True)


def _run(
    command: list[str], scratch: Path | None = None, env: dict[str, str] | None = None
) -> None:
    """Run `command` to the end; on SIGINT/SIGTERM stop it and let the caller clean up."""
    environment = {**os.environ, **(env or {})}
    if scratch is not None:
        environment["TMPDIR"] = str(scratch)  # compilers' temporary files go there too
    process = subprocess.Popen(command, env=environment)
    try:
        code = process.wait()
    except BaseException:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise
    if code:
        raise SetupError(f"`{' '.join(command)}` failed (exit {code})")


def _version(command: list[str]) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    match = re.search(r"(\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def install_apt(names: set[str] | None = None) -> None:
    wanted = [tool for tool in APT if names is None or tool.binary in names]
    missing = sorted({tool.package for tool in wanted if find(tool.binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        raise SetupError(
            f"missing Debian packages; as root run: apt-get install -y {' '.join(missing)}"
        )
    started = _step(f"installing {', '.join(missing)} with apt", "about 1 min")
    _run(["apt-get", "update", "-q"])
    _run(["apt-get", "install", "-y", "-q", *missing], env={"DEBIAN_FRONTEND": "noninteractive"})
    _done(started)


def _has_nydus() -> bool:
    image = find("nydus-image")
    if find("nydusd") is None or image is None:
        return False
    out = subprocess.run([image, "--version"], capture_output=True, text=True, check=False)
    return NYDUS_VERSION in out.stdout


def install_nydus() -> None:
    if _has_nydus():
        return
    cargo = find("cargo")
    rustc = find("rustc")
    version = _version([rustc, "--version"]) if rustc else None
    if cargo is None or version is None or version < _RUST_MINIMUM:
        have = "no Rust" if version is None else f"Rust {'.'.join(map(str, version))}"
        raise SetupError(
            f"building nydusd needs Rust >= {'.'.join(map(str, _RUST_MINIMUM))} and this machine "
            f"has {have} (Debian bookworm's is 1.63): install it with `{_RUSTUP}`, then rerun"
        )
    started = _step(
        f"building nydusd and nydus-image: cargo install nydus-rs {NYDUS_VERSION}",
        "about 20 min on 2 cores (once; reused after)",
    )
    with tempfile.TemporaryDirectory(prefix="dfagent-nydus-build-") as scratch:
        _run(
            [
                cargo, "install", "nydus-rs", "--version", NYDUS_VERSION, "--locked",
                "--target-dir", str(Path(scratch) / "target"),
            ],
            scratch=Path(scratch),
        )  # fmt: skip
    _done(started)


def install_helm() -> None:
    helm = find("helm")
    if helm is not None:
        out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True)
        if out.stdout.startswith(HELM_VERSION):
            return
    go = find("go")
    version = _version([go, "version"]) if go else None
    if go is None or version is None or version < _GO_MINIMUM:
        have = "no Go" if version is None else f"Go {'.'.join(map(str, version))}"
        raise SetupError(
            f"building helm {HELM_VERSION} needs Go >= {'.'.join(map(str, _GO_MINIMUM))} and "
            f"this machine has {have} (Debian bookworm's is 1.19): install a newer Go "
            "(for example from the golang-1.22 package of bookworm-backports), then rerun"
        )
    started = _step(
        f"building helm: go install helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",
        "about 3 min on 2 cores (once; reused after)",
    )
    with tempfile.TemporaryDirectory(prefix="dfagent-helm-build-") as scratch:
        _run(
            [go, "install", f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"],
            scratch=Path(scratch),
            env={"GOTMPDIR": scratch},
        )
    _done(started)


def install_venv() -> None:
    """`.venv` with the project installed in it (editable, with the test and bench extras),
    made again only when pyproject.toml changes."""
    stamp = VENV / ".installed-from"
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    started = _step("installing dfagent and its test tools into .venv with pip", "about 1 min")
    if not (VENV / "bin" / "python").exists():
        made = subprocess.run([sys.executable, "-m", "venv", str(VENV)], capture_output=True)
        if made.returncode != 0:
            shutil.rmtree(VENV, ignore_errors=True)
            raise SetupError(
                "cannot create .venv (on Debian: apt-get install -y python3-venv): "
                + made.stderr.decode(errors="replace").strip().splitlines()[-1]
            )
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
    _run([*pip, "-e", f"{ROOT}[test,bench]"])
    stamp.write_text(wanted)
    _done(started)


def install(quick: bool) -> None:
    install_apt(QUICK_APT if quick else None)
    install_venv()
    if not quick:
        install_helm()
        install_nydus()
        if not Path("/dev/fuse").exists():
            print("setup: warning: no /dev/fuse: the nydusd tests will fail", flush=True)


def _stop_on_sigterm() -> None:
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.support.tools")
    parser.add_argument("action", choices=["install"])
    parser.add_argument(
        "--quick", action="store_true", help="only what the quick suite (-m 'not slow') needs"
    )
    args = parser.parse_args()
    _stop_on_sigterm()
    try:
        install(args.quick)
    except SetupError as exc:
        print(f"setup: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("setup: interrupted; nothing half-built is left behind", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
