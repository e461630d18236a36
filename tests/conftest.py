"""Shared fixtures: the real registry, a counting origin in front of it, dfagent processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.agent import AgentProcess, deep_merge
from tests.support.counting import CountingOrigin
from tests.support.ports import free_port
from tests.support.registry import Registry, basic_auth, make_htpasswd
from tests.support.tokens import TokenService

USER, PASSWORD = "puller", "s3cret-pw"
OTHER_USER = ("second-puller", "an0ther-pw")
TOKEN = "t0ken-for-tests-" + "x" * 16  # the swarm's cluster token

os.environ.setdefault("PYTHONASYNCIODEBUG", "1")

# A whole run's temporary files (passed tests' go at once) peaked at 1.0 GiB and the benchmark
# smoke run's work at 0.6 GiB, measured; a full disk fails tests at random instead.
_DISK_NEEDED = 3 << 30


def pytest_configure(config: pytest.Config) -> None:
    """Commands the tests start act on Ctrl-C (SIGINT) as they do in a terminal, also when
    this run inherited SIGINT ignored (as `./test.sh &` in a script leaves it): a handler here,
    unlike an ignored signal, is not passed on to the processes started. And a disk too full
    for the run is said at once."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    temporary = config.option.basetemp or tempfile.gettempdir()
    for wanted in (Path(temporary).absolute(), Path(__file__).parent.parent / "bench"):
        directory = next(d for d in (wanted, *wanted.parents) if d.exists())  # (a --basetemp)
        free = shutil.disk_usage(directory).free
        if free < _DISK_NEEDED:
            raise pytest.UsageError(
                f"{directory}: {free / 2**30:.1f} GiB free, the tests need about "
                f"{_DISK_NEEDED / 2**30:.0f} GiB there"
            )


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    reg = Registry(tmp_path_factory.mktemp("registry")).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind htpasswd basic auth; `auth_header` holds valid credentials."""
    root = tmp_path_factory.mktemp("auth-registry")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(make_htpasswd(USER, PASSWORD) + make_htpasswd(*OTHER_USER))
    reg = Registry(root, htpasswd=htpasswd)
    reg.auth_header = basic_auth(USER, PASSWORD)
    reg.start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with bearer-token auth: its token service grants USER what it asks for."""
    root = tmp_path_factory.mktemp("token-registry")
    tokens = TokenService(root / "tokens", {USER: PASSWORD}).start()
    reg = Registry(root, tokens=tokens).start()
    yield reg
    reg.stop()
    tokens.stop()


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry serving https with a certificate from a test CA (`root/ca.pem`)."""
    root = tmp_path_factory.mktemp("tls-registry")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(root / "ca.pem"))
    leaf.private_key_pem.write_to_path(str(root / "key.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
    for extra in leaf.cert_chain_pems[1:]:
        extra.write_to_path(str(root / "cert.pem"), append=True)
    reg = Registry(root, tls=(root / "cert.pem", root / "key.pem")).start()
    yield reg
    reg.stop()


@pytest.fixture
def origin(registry: Registry) -> Iterator[CountingOrigin]:
    counting = CountingOrigin(registry.url).start()
    yield counting
    counting.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    started: list[AgentProcess] = []

    def start(name: str = "agent", **overrides: Any) -> AgentProcess:
        agent = AgentProcess(tmp_path / name, overrides).start()
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture
def agent(agent_factory: Callable[..., AgentProcess]) -> AgentProcess:
    return agent_factory()


@pytest.fixture
def swarm(tmp_path: Path) -> Iterator[Callable[..., list[AgentProcess]]]:
    """`swarm(count, **config)` starts that many agents on loopback, each knowing the others
    (`config` is merged into each agent's own settings; `each`, a list of one config per
    agent, after it)."""
    started: list[AgentProcess] = []
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")

    def start(
        count: int, each: list[dict[str, Any]] | None = None, **overrides: object
    ) -> list[AgentProcess]:
        ports = [free_port() for _ in range(count)]
        members = [f"127.0.0.1:{port}" for port in ports]
        agents = []
        for i, port in enumerate(ports):
            config = deep_merge(
                {
                    "storage": {"piece_size": "256KiB"},
                    "peer": {
                        "listen": f"127.0.0.1:{port}",
                        "token_file": str(token_file),
                        # A live peer on a loaded 2-core test machine (asyncio debug mode,
                        # many agents) may take longer than the production 100 ms to accept:
                        # the tests check who fetches what, not how fast a busy peer is given
                        # up on.
                        "connect_timeout": "2s",
                    },
                    "swarm": {"peers": members, "advertise": members[i], "refresh": "1s"},
                },
                overrides,
            )
            if each is not None:
                config = deep_merge(config, each[i])
            agents.append(AgentProcess(tmp_path / f"agent{i}", config).start())
        started.extend(agents)
        return agents

    yield start
    for agent in started:
        agent.kill()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1600 KiB tmpfs: a disk that fills up after a few pieces."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount)])
    if result.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own temporary directories are root-only), for
    an agent run as another user."""
    path = Path(tempfile.mkdtemp(prefix="dfagent-open-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
