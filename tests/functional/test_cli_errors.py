"""Bad input, unusable paths, unreachable agents and registries, and Ctrl-C: every subcommand
answers with one line and its documented exit code, never a traceback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from aiohttp import web

from tests.support.counting import CountingOrigin
from tests.support.metrics import metric, wait_for
from tests.support.ports import free_port
from tests.support.registry import Registry

INTERRUPTED = 130


def dfagent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dfagent", *args], capture_output=True, text=True, timeout=timeout
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> str:
    """The single stderr line of a failed command, checked for `parts` and exit `code`."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert result.returncode == code, result.stderr
    for part in parts:
        assert part in lines[0], lines[0]
    return lines[0]


def write_config(path: Path, storage_dir: Path | str, **sections: dict) -> Path:
    config = {
        "proxy": {"listen": "127.0.0.1:0"},
        "health": {"listen": "127.0.0.1:0"},
        "metrics": {"listen": "127.0.0.1:0"},
        "storage": {"dir": str(storage_dir)},
        **sections,
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def blob(registry: Registry) -> tuple[str, bytes]:
    data = os.urandom(1_200_000)
    return registry.push_blob("test/cli-errors", data), data


# get ---------------------------------------------------------------------------------------


def test_get_output_paths_that_cannot_be_written(agent, registry, blob, tmp_path):
    digest, data = blob
    target = f"{registry.host}/test/cli-errors@{digest}"

    def get(output: Path | str):
        return agent.cli("get", target, "--plain-http", "-O", str(output))

    missing = get(tmp_path / "missing-dir" / "file")
    one_line_error(missing, 2, "dfagent get: ", "missing-dir does not exist")
    directory = get(tmp_path)
    one_line_error(directory, 2, "dfagent get: ", "is a directory")
    (tmp_path / "a-file").write_text("")
    under_a_file = get(tmp_path / "a-file" / "blob")
    one_line_error(under_a_file, 2, "a-file is not a directory")
    unwritable = get("/proc/blob")  # not even root may create a file there
    one_line_error(unwritable, 1, "dfagent get: cannot write /proc/blob.part")
    (tmp_path / "out.part").mkdir()
    part_in_the_way = get(tmp_path / "out")
    one_line_error(part_in_the_way, 1, f"cannot write {tmp_path / 'out.part'}: Is a directory")

    done = get(tmp_path / "fine")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fine").read_bytes() == data


def test_get_with_a_registry_that_is_not_there(agent_factory, blob, tmp_path):
    digest, _ = blob
    closed = free_port()
    target = f"127.0.0.1:{closed}/test/cli-errors@{digest}"
    agent = agent_factory()
    through_agent = agent.cli("get", target, "--plain-http", "-O", str(tmp_path / "a"))
    one_line_error(through_agent, 1, "dfagent get: ", f"127.0.0.1:{closed}")
    agent.stop()
    in_process = agent.cli("get", target, "--plain-http", "-O", str(tmp_path / "b"))
    one_line_error(in_process, 1, "dfagent get: ", f"127.0.0.1:{closed}")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_get_with_a_docker_config_that_cannot_be_read(agent, registry, blob, tmp_path):
    digest, _ = blob
    target = f"{registry.host}/test/cli-errors@{digest}"
    out = str(tmp_path / "o")
    absent = agent.cli("get", target, "-O", out, "--docker-config", str(tmp_path / "absent.json"))
    one_line_error(absent, 2, "absent.json")
    (tmp_path / "broken.json").write_text("{not json")
    broken = agent.cli("get", target, "-O", out, "--docker-config", str(tmp_path / "broken.json"))
    one_line_error(broken, 2, "cannot read docker config")
    no_password = agent.cli("get", target, "-O", out, "-u", "someone", "--password-stdin")
    one_line_error(no_password, 2, "needs a password")


def stall_after(origin: CountingOrigin, digest: str, sent: int) -> threading.Event:
    """Make the origin send `sent` bytes of the blob, then nothing until the event is set."""
    release = threading.Event()

    async def stall(request: web.BaseRequest) -> web.StreamResponse | None:
        if release.is_set() or request.method != "GET" or not request.path.endswith(digest):
            return None
        upstream = await origin.forward(request)
        response = web.StreamResponse(status=upstream.status, headers=upstream.headers)
        await response.prepare(request)
        await response.write(upstream.body[:sent])
        while not release.is_set():
            await asyncio.sleep(0.05)
        return response

    origin.faults.append(stall)
    return release


def interrupt(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr


def interrupted_get(agent, target: str, output: Path, release) -> None:
    """`dfagent get TARGET -O OUTPUT` interrupted (SIGINT) once its .part holds 512 KiB; it
    says so in one line, keeps the .part, and the stalled origin is released."""
    part = output.with_name(output.name + ".part")
    command = [sys.executable, "-m", "dfagent", "get", target, "-O", str(output)]
    command += ["--config", str(agent.config_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: part.exists() and part.stat().st_size >= 512 * 1024, "bytes in the .part")
        code, stderr = interrupt(process)
    finally:
        release.set()
        process.kill()
    result = subprocess.CompletedProcess(command, code, "", stderr)
    one_line_error(result, INTERRUPTED, "dfagent get: interrupted", f"{part} is kept")


def test_ctrl_c_during_get_keeps_the_part_for_the_next_run(agent_factory, origin, blob, tmp_path):
    digest, data = blob
    agent = agent_factory(storage={"piece_size": "256KiB"})
    release = stall_after(origin, digest, 600_000)
    target = f"{origin.url}/v2/test/cli-errors/blobs/{digest}"
    output, part = tmp_path / "layer", tmp_path / "layer.part"
    interrupted_get(agent, target, output, release)
    kept = part.read_bytes()
    assert len(kept) >= 512 * 1024 and data.startswith(kept)
    assert not output.exists()

    def served() -> float:
        return sum(
            metric(agent, f'dfagent_served_bytes_total{{source="{source}"}}')
            for source in ("local", "origin")
        )

    before = served()
    again = agent.cli("get", target, "-O", str(output))
    assert again.returncode == 0, again.stderr
    assert output.read_bytes() == data
    assert served() - before == len(data) - len(kept), "only the rest was asked for"


def test_ctrl_c_during_get_with_an_agent_started_in_process(agent_factory, origin, blob, tmp_path):
    """The agent the command started stops cleanly too: the cache is left unlocked and whole."""
    digest, data = blob
    agent = agent_factory(storage={"piece_size": "256KiB"})
    agent.stop()
    release = stall_after(origin, digest, 600_000)
    target = f"{origin.url}/v2/test/cli-errors/blobs/{digest}"
    output, part = tmp_path / "layer", tmp_path / "layer.part"
    interrupted_get(agent, target, output, release)
    assert data.startswith(part.read_bytes())

    again = agent.cli("get", target, "-O", str(output))
    assert again.returncode == 0, again.stderr
    assert output.read_bytes() == data
    checked = agent.cli("verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr


# preheat -----------------------------------------------------------------------------------


def test_ctrl_c_while_following_a_preheat_leaves_the_job_to_the_agent(agent, origin, registry):
    layer = os.urandom(800_000)
    registry.push_manifest("test/cli-preheat", "v1", b'{"os":"linux"}', [layer])
    digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    release = stall_after(origin, digest, 100_000)
    command = [sys.executable, "-m", "dfagent", "preheat", f"{origin.host}/test/cli-preheat:v1"]
    command += ["--plain-http", "--config", str(agent.config_path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: origin.blob_gets(digest), "the preheat to fetch the layer")
        code, stderr = interrupt(process)
    finally:
        release.set()
        process.kill()
    result = subprocess.CompletedProcess(command, code, "", stderr)
    line = one_line_error(result, INTERRUPTED, "dfagent preheat: interrupted", "goes on")
    job = line.split("; preheat ")[1].split()[0]

    def state() -> str:
        jobs = json.loads(agent.cli("status", "--json").stdout)["preheat"]
        return next(j["state"] for j in jobs if j["id"] == job)

    wait_for(lambda: state() == "succeeded", "the job to finish in the agent")


def test_preheat_of_a_registry_that_is_not_there(agent):
    closed = free_port()
    done = agent.cli("preheat", f"127.0.0.1:{closed}/app:1", "--plain-http")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert f"127.0.0.1:{closed}" in done.stdout


# status, gc, verify ------------------------------------------------------------------------


def fake_agent(tmp_path: Path, *, hang_up: bool) -> Iterator[tuple[Path, threading.Event]]:
    """A control socket that takes requests and never answers: it holds each connection (an
    agent busy for ever) or, with `hang_up`, closes it (an agent killed while answering). The
    event is set once a request has arrived."""
    storage = tmp_path / "cache"
    storage.mkdir()
    asked = threading.Event()
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(storage / "dfagent.sock"))
    server.listen()
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            held.append(connection)
            if connection.recv(4096):
                asked.set()
            if hang_up:
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield write_config(tmp_path / "dfagent.yaml", storage), asked
    server.shutdown(socket.SHUT_RDWR)
    server.close()
    for connection in held:
        connection.close()


@pytest.fixture
def silent_agent(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    yield from fake_agent(tmp_path, hang_up=False)


@pytest.fixture
def hanging_up_agent(tmp_path: Path) -> Iterator[tuple[Path, threading.Event]]:
    yield from fake_agent(tmp_path, hang_up=True)


@pytest.mark.parametrize(
    "command", [["status"], ["gc"], ["verify"], ["preheat", "r.example/app:1"]]
)
def test_an_agent_that_hangs_up_without_answering(hanging_up_agent, command):
    config, asked = hanging_up_agent
    result = dfagent(*command, "-c", str(config))
    assert asked.is_set()
    one_line_error(result, 1, f"dfagent {command[0]}: ", "stopped answering")


@pytest.mark.parametrize("command", ["status", "gc", "verify"])
def test_ctrl_c_while_waiting_for_the_agent(silent_agent, command):
    config, asked = silent_agent
    process = subprocess.Popen(
        [sys.executable, "-m", "dfagent", command, "-c", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert asked.wait(30), "the command never asked the agent"
        code, stderr = interrupt(process)
    finally:
        process.kill()
    result = subprocess.CompletedProcess([], code, "", stderr)
    one_line_error(result, INTERRUPTED, f"dfagent {command}: interrupted")


@pytest.mark.parametrize("command", ["status", "gc", "verify"])
def test_maintenance_commands_without_a_usable_config_or_cache(command, tmp_path):
    missing = dfagent(command, "-c", str(tmp_path / "absent.yaml"))
    one_line_error(missing, 2, f"dfagent {command}: cannot read config", "absent.yaml")
    no_cache = dfagent(command, "-c", str(write_config(tmp_path / "a.yaml", tmp_path / "none")))
    one_line_error(no_cache, 1, f"dfagent {command}: ", str(tmp_path / "none"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.sqlite").write_bytes(b"this is not a database, " * 100)
    corrupt = dfagent(command, "-c", str(write_config(tmp_path / "b.yaml", broken)))
    one_line_error(corrupt, 1, f"dfagent {command}: cannot open the index")


def test_maintenance_of_a_cache_an_agent_holds_but_does_not_answer_for(agent, tmp_path):
    """The agent's socket is gone (deleted by hand): the cache is locked, and the command
    says by whom instead of waiting or failing obscurely."""
    (agent.storage_dir / "dfagent.sock").unlink()
    result = agent.cli("gc")
    one_line_error(result, 1, "dfagent gc: ", "in use by another dfagent")


# run ---------------------------------------------------------------------------------------


def run_briefly(config: Path) -> subprocess.CompletedProcess[str]:
    """`dfagent run` that fails to start; of its log lines stderr keeps the errors only (the
    start-up is logged at debug and info, and asyncio's debug mode warns of slow steps)."""
    result = dfagent("run", "--config", str(config), timeout=30)
    kept = [
        line
        for line in result.stderr.splitlines()
        if not line.startswith("ts=") or " level=error " in line
    ]
    result.stderr = "\n".join(kept)
    return result


def test_run_with_a_storage_dir_it_cannot_use(tmp_path):
    cannot_create = run_briefly(write_config(tmp_path / "a.yaml", "/proc/dfagent-cache"))
    one_line_error(cannot_create, 1, "cannot start: storage.dir: cannot use /proc/dfagent-cache")
    (tmp_path / "a-file").write_text("")
    a_file = run_briefly(write_config(tmp_path / "b.yaml", tmp_path / "a-file"))
    one_line_error(a_file, 1, "cannot start: storage.dir: ")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "index.sqlite").write_bytes(b"this is not a database, " * 100)
    corrupt = run_briefly(write_config(tmp_path / "c.yaml", broken))
    one_line_error(corrupt, 1, "cannot start: cannot open the index", "not a database")
    deep = tmp_path / ("d" * 110)
    too_long = run_briefly(write_config(tmp_path / "d.yaml", deep))
    one_line_error(too_long, 1, "cannot start: storage.dir: cannot open the control socket")


def test_run_with_files_it_cannot_read(tmp_path):
    unreadable = run_briefly(tmp_path / "absent.yaml")
    one_line_error(unreadable, 2, "dfagent run: cannot read config", "absent.yaml")
    token = write_config(
        tmp_path / "t.yaml",
        tmp_path / "cache",
        peer={"listen": "127.0.0.1:0", "token_file": str(tmp_path / "no-token")},
        swarm={"peers": ["127.0.0.1:9"]},
    )
    one_line_error(run_briefly(token), 1, "cannot start: peer.token_file")
    (tmp_path / "no-token").write_bytes(b"\xff" * 32)
    one_line_error(run_briefly(token), 1, "cannot start: peer.token_file", "not UTF-8 text")


def test_run_refuses_a_port_in_use_and_a_cache_in_use(agent, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        config = write_config(
            tmp_path / "p.yaml", tmp_path / "cache", metrics={"listen": f"127.0.0.1:{port}"}
        )
        in_use = run_briefly(config)
    one_line_error(in_use, 1, f"metrics: cannot listen on 127.0.0.1:{port}")
    second = run_briefly(agent.config_path)
    one_line_error(second, 1, "is in use by another dfagent")


# config check ------------------------------------------------------------------------------


def test_config_check_of_files_it_cannot_read(tmp_path):
    absent = dfagent("config", "check", str(tmp_path / "absent.yaml"))
    one_line_error(absent, 2, "dfagent config check: cannot read config", "No such file")
    directory = dfagent("config", "check", str(tmp_path))
    one_line_error(directory, 2, "Is a directory")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00 not text")
    binary = dfagent("config", "check", str(tmp_path / "binary.yaml"))
    one_line_error(binary, 2, "binary.yaml: not UTF-8 text")
    (tmp_path / "bad.yaml").write_text("proxy: [unclosed\n")
    invalid = dfagent("config", "check", str(tmp_path / "bad.yaml"))
    assert invalid.returncode == 2 and "Traceback" not in invalid.stderr
    assert "not valid YAML" in invalid.stderr


def test_every_subcommand_documents_its_exit_codes():
    for command in (["run"], ["get"], ["preheat"], ["status"], ["gc"], ["verify"]):
        shown = dfagent(*command, "--help")
        assert shown.returncode == 0
        assert "exit codes: 0 " in " ".join(shown.stdout.split()), command
    check = dfagent("config", "check", "--help")
    assert "exit codes: 0 " in " ".join(check.stdout.split())
