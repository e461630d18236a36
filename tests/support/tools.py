"""The programs the tests and benchmarks run, and the one place that installs them.

`python3 -m tests.support.tools install [--quick]` (what `./test.sh` runs before any test)
installs every missing program: Debian packages with apt (the registry, the benchmark tools,
containerd and runc), nydusd and nydus-image with cargo, helm, nerdctl and containerd-nydus-grpc
with go, a real Dragonfly cluster's programs (the scheduler with go; dfdaemon and dfget with
cargo), and the project itself into `.venv`. Each long step prints one line saying what it
does and about how long it takes; what is already installed is reused. An interrupted build
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
# Where cargo and go install: searched before PATH, as ./test.sh puts them first on PATH, so
# that what the installer checks is what the tests run.
SEARCH_PATH = [_CARGO_BIN, _GO_BIN]

NYDUS_VERSION = "2.2.0"
HELM_VERSION = "v3.16.3"
DRAGONFLY_CLIENT_VERSION = "1.5.10"  # the crate dragonfly-client: dfdaemon and dfget
_RUST_MINIMUM = (1, 66)  # nydus-rs 2.2.0's rust-toolchain
_DRAGONFLY_CLIENT_RUST = (1, 88)  # the highest rust-version in its Cargo.lock (tonic 0.14)
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
    # the container stack: containerd (with ctr), runc, and a static busybox for a root fs
    Apt("containerd", "containerd"),
    Apt("runc", "runc"),
    Apt("busybox", "busybox-static"),
]
QUICK_APT = {"docker-registry", "htpasswd"}  # all the quick suite (-m "not slow") starts

# Only for building dfdaemon and dfget, so installed only when they must be built: protoc and
# protobuf's .proto files (their gRPC API), clang and libclang (bindgen, RocksDB), cmake,
# pkg-config and OpenSSL's headers (their C and C++ dependencies).
DRAGONFLY_CLIENT_BUILD_APT = (
    "protobuf-compiler",
    "libprotobuf-dev",
    "clang",
    "libclang-dev",
    "pkg-config",
    "libssl-dev",
    "cmake",
)


def find(name: str) -> str | None:
    """The path of program `name` where cargo and go install or on PATH, else None."""
    path = os.pathsep.join([*map(str, SEARCH_PATH), os.environ.get("PATH", "")])
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
    command: list[str],
    scratch: Path | None = None,
    env: dict[str, str] | None = None,
    *,
    quiet: bool = False,
) -> None:
    """Run `command` to the end; on SIGINT/SIGTERM stop it and let the caller clean up.
    `quiet` keeps its output (in `scratch`) and shows the end of it only if it fails."""
    environment = {**os.environ, **(env or {})}
    if scratch is not None:
        environment["TMPDIR"] = str(scratch)  # compilers' temporary files go there too
    output = None
    if quiet:
        assert scratch is not None
        output = (scratch / "output.log").open("w+b")
    process = subprocess.Popen(
        command, env=environment, stdout=output, stderr=subprocess.STDOUT if quiet else None
    )
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
        tail = ""
        if output is not None:
            output.seek(0)
            tail = ":\n" + "\n".join(output.read().decode(errors="replace").splitlines()[-20:])
            output.close()
        raise SetupError(f"`{' '.join(command)}` failed (exit {code}){tail}")
    if output is not None:
        output.close()


def _version(command: list[str]) -> tuple[int, ...] | None:
    """The first version number `command` prints: (major, minor) or (major, minor, patch)."""
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", out)
    return tuple(int(part) for part in match.groups() if part is not None) if match else None


def _deb_installed(package: str) -> bool:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except OSError:
        return False
    return out.endswith(" installed")


def install_apt(names: set[str] | None = None, packages: tuple[str, ...] = ()) -> None:
    """The Debian packages of the tools named (all of APT for None) whose program is missing,
    and those of `packages` (libraries, build tools) that are not installed."""
    wanted = [tool for tool in APT if names is None or tool.binary in names]
    missing = sorted(
        {tool.package for tool in wanted if find(tool.binary) is None}
        | {package for package in packages if not _deb_installed(package)}
    )
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
    if NYDUS_VERSION in out.stdout:
        return True
    # Built by `cargo install` from crates.io there is no git to stamp a version from
    # ("Version: unknown"); cargo's own record of what it installed says which.
    record = _CARGO_BIN.parent / ".crates.toml"
    return record.exists() and f'"nydus-rs {NYDUS_VERSION} ' in record.read_text()


def install_nydus() -> None:
    if _has_nydus():
        return
    cargo = _require_toolchain(
        "Rust", "cargo", ["rustc", "--version"], _RUST_MINIMUM, "nydusd", "1.63",
        f"install it with `{_RUSTUP}`",
    )  # fmt: skip
    started = _step(
        f"building nydusd and nydus-image: cargo install nydus-rs {NYDUS_VERSION}",
        "about 4 min on 2 cores, 15 on a busy machine (once; reused after)",
    )
    with tempfile.TemporaryDirectory(prefix="dfagent-nydus-build-") as scratch:
        _run(
            [
                cargo, "install", "nydus-rs", "--version", NYDUS_VERSION, "--locked",
                "--target-dir", str(Path(scratch) / "target"),
            ],
            scratch=Path(scratch),
            quiet=True,
        )  # fmt: skip
    _done(started)


DRAGONFLY_CLIENT_BINARIES = ("dfdaemon", "dfget")

# A lighter release profile for dfdaemon and dfget: optimisation level 1, no debug info, no
# incremental state. On a busy 2-core machine the default release build took 40 min, this one
# 12.5 min (all five of the crate's programs, at nice 19).
_LIGHT_RELEASE = {
    "CARGO_PROFILE_RELEASE_OPT_LEVEL": "1",
    "CARGO_PROFILE_RELEASE_DEBUG": "false",
    "CARGO_PROFILE_RELEASE_INCREMENTAL": "false",
}


def _has_dragonfly_client() -> bool:
    """dfdaemon and dfget are installed, both of DRAGONFLY_CLIENT_VERSION."""
    for binary in DRAGONFLY_CLIENT_BINARIES:
        path = find(binary)
        if path is None:
            return False
        out = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
        if out.stdout.split()[:2] != [binary, DRAGONFLY_CLIENT_VERSION]:  # "dfget 1.5.10 (...)"
            return False
    return True


def dragonfly_client_build(cargo: str, target: Path) -> tuple[list[str], dict[str, str]]:
    """The command that builds dfdaemon and dfget (only those of the crate's programs) in
    `target` and installs them into cargo's bin directory, and the environment it runs with."""
    command = [
        cargo, "install", "dragonfly-client", "--version", DRAGONFLY_CLIENT_VERSION, "--locked",
        *(argument for binary in DRAGONFLY_CLIENT_BINARIES for argument in ("--bin", binary)),
        "--target-dir", str(target),
    ]  # fmt: skip
    return command, dict(_LIGHT_RELEASE)


def install_dragonfly_client() -> None:
    if _has_dragonfly_client():
        return
    cargo = _require_toolchain(
        "Rust", "cargo", ["rustc", "--version"], _DRAGONFLY_CLIENT_RUST, "dfdaemon and dfget",
        "1.63", f"install it with `{_RUSTUP}` (or `rustup update`)",
    )  # fmt: skip
    started = _step(
        f"building dfdaemon and dfget: cargo install dragonfly-client {DRAGONFLY_CLIENT_VERSION}",
        "about 13 min on 2 cores, more on a busy machine (once; reused after)",
    )
    with tempfile.TemporaryDirectory(prefix="dfagent-dragonfly-build-") as scratch:
        command, env = dragonfly_client_build(cargo, Path(scratch) / "target")
        _run(command, scratch=Path(scratch), env=env, quiet=True)
    _done(started)


def install_helm() -> None:
    helm = find("helm")
    if helm is not None:
        out = subprocess.run([helm, "version", "--short"], capture_output=True, text=True)
        if out.stdout.startswith(HELM_VERSION):
            return
    go = _require_go(_GO_MINIMUM, f"helm {HELM_VERSION}")
    started = _step(
        f"building helm: go install helm.sh/helm/v3/cmd/helm@{HELM_VERSION}",
        "about 2 min on 2 cores (once; reused after)",
    )
    # The version stamp a release build carries, so that the check above knows this build.
    stamp = f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
    with tempfile.TemporaryDirectory(prefix="dfagent-helm-build-") as scratch:
        _run(
            [go, "install", "-ldflags", stamp, f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"],
            scratch=Path(scratch),
            env={"GOTMPDIR": scratch},
            quiet=True,
        )
    _done(started)


@dataclass(frozen=True)
class GoProgram:
    """A program built from a Go module's source: `go install module/cmd@version` is refused
    for these modules (a version list not served, `exclude` directives in go.mod), so the
    module is downloaded, copied out of the read-only module cache and built in place."""

    binary: str
    module: str
    version: str
    version_variable: str  # package.Variable the release build stamps the version into
    go_minimum: tuple[int, ...]
    minutes: int  # about how long a cold build takes on 2 cores
    version_command: tuple[str, ...] = ("--version",)  # arguments that print the version
    cgo: bool = True  # False: a static binary, built with CGO_ENABLED=0 as its releases are

    def installed(self) -> bool:
        path = find(self.binary)
        if path is None:
            return False
        out = subprocess.run(
            [path, *self.version_command], capture_output=True, text=True, check=False
        )
        return self.version.lstrip("v") in out.stdout

    def build(self, go: str, source: Path, out: Path) -> tuple[list[str], dict[str, str]]:
        """The command that builds the program from its module's source into `out`, with the
        version stamped as a release build does, and the environment it needs."""
        command = [
            go, "-C", str(source), "build", "-o", str(out),
            "-ldflags", f"-s -w -X {self.version_variable}={self.version}",
            f"./cmd/{self.binary}",
        ]  # fmt: skip
        return command, {} if self.cgo else {"CGO_ENABLED": "0"}


GO_PROGRAMS = [
    GoProgram(
        "nerdctl",
        "github.com/containerd/nerdctl",
        "v1.7.7",  # v2 needs containerd >= 1.7; Debian bookworm has 1.6
        "github.com/containerd/nerdctl/pkg/version.Version",
        (1, 21),
        minutes=2,
    ),
    GoProgram(
        "containerd-nydus-grpc",
        "github.com/containerd/nydus-snapshotter",
        "v0.16.1",
        "github.com/containerd/nydus-snapshotter/version.Version",
        (1, 25),
        minutes=2,
    ),
    # Dragonfly's scheduler, for tests against a real Dragonfly cluster. Its source's own
    # version variable says v2.5.0; releases stamp the tag, and so does this build.
    GoProgram(
        "scheduler",
        "d7y.io/dragonfly/v2",
        "v2.5.1",
        "d7y.io/dragonfly/v2/version.GitVersion",
        (1, 25, 5),  # its go.mod
        minutes=3,  # 86 s cold on an idle 2-core machine, up to 12 min on a busy one
        version_command=("version",),
        cgo=False,
    ),
]


def _require_go(minimum: tuple[int, ...], building: str) -> str:
    return _require_toolchain(
        "Go", "go", ["go", "version"], minimum, building, "1.19",
        "install a newer Go (from https://go.dev/dl/)",
    )  # fmt: skip


def _require_toolchain(
    language: str,
    binary: str,
    version_command: list[str],
    minimum: tuple[int, ...],
    building: str,
    debian_has: str,
    how: str,
) -> str:
    """The path of `binary` when the toolchain's version is at least `minimum`; else
    SetupError saying what is needed, what is here, and `how` to get it."""
    path = find(binary)
    tool = find(version_command[0])
    version = _version([tool, *version_command[1:]]) if tool else None
    if path is None or version is None or version < minimum:
        have = f"no {language}" if version is None else f"{language} {_dotted(version)}"
        raise SetupError(
            f"building {building} needs {language} >= {_dotted(minimum)} and this machine has "
            f"{have} (Debian bookworm's is {debian_has}): {how}, then rerun"
        )
    return path


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def install_go_programs() -> None:
    missing = [program for program in GO_PROGRAMS if not program.installed()]
    if not missing:
        return
    go = _require_go(
        max(program.go_minimum for program in missing),
        " and ".join(f"{p.binary} {p.version}" for p in missing),
    )
    started = _step(
        f"building {', '.join(p.binary for p in missing)} from their Go modules",
        f"about {sum(p.minutes for p in missing)} min on 2 cores (once; reused after)",
    )
    _GO_BIN.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dfagent-go-build-") as scratch:
        env = {"GOTMPDIR": scratch, "GOTOOLCHAIN": "local", "GOFLAGS": "-buildvcs=false"}
        for program in missing:
            modules = subprocess.run(
                [go, "env", "GOMODCACHE"], capture_output=True, text=True, check=True
            ).stdout.strip()
            reference = f"{program.module}@{program.version}"
            _run([go, "mod", "download", reference], scratch=Path(scratch), env=env, quiet=True)
            source = Path(scratch) / program.binary
            shutil.copytree(Path(modules) / reference, source)
            source.chmod(0o755)
            for path in source.rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            built = Path(scratch) / "out" / program.binary
            command, build_env = program.build(go, source, built)
            _run(command, scratch=Path(scratch), env={**env, **build_env}, quiet=True)
            shutil.move(built, _GO_BIN / program.binary)
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
    if quick:
        install_apt(QUICK_APT)
    else:
        install_apt(None, () if _has_dragonfly_client() else DRAGONFLY_CLIENT_BUILD_APT)
    install_venv()
    if not quick:
        install_helm()
        install_nydus()
        install_go_programs()
        install_dragonfly_client()
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
