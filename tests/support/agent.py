"""dfagent as a real process, configured through a real YAML file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_READY = re.compile(r"msg=ready pid=\d+ proxy=(\d+) admin=([\d,]+) peer=(\S+)")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


@dataclass
class AgentProcess:
    root: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    extra_args: list[str] = field(default_factory=list)
    command_prefix: list[str] = field(default_factory=list)  # e.g. ip netns exec NAME
    process: subprocess.Popen[bytes] | None = None
    proxy_port: int = 0
    health_port: int = 0
    metrics_port: int = 0
    peer_port: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "dfagent.yaml"

    @property
    def log_path(self) -> Path:
        return self.root / "dfagent.log"

    @property
    def storage_dir(self) -> Path:
        return self.root / "cache"

    def data_file(self, digest: str) -> Path:
        """The cache's data file of blob `digest` (sha256:<hex> or <hex>)."""
        hexd = digest.removeprefix("sha256:")
        return self.storage_dir / "blobs" / hexd[:2] / hexd

    def flip_stored_bit(self, digest: str, offset: int) -> None:
        """Damage the cached copy of a blob: flip one bit of byte `offset` of its data file."""
        with self.data_file(digest).open("r+b") as file:
            file.seek(offset)
            byte = file.read(1)
            file.seek(offset)
            file.write(bytes([byte[0] ^ 0x10]))

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}"

    def write_config(self) -> None:
        base = {
            "proxy": {"listen": "127.0.0.1:0", "shutdown_grace": "5s"},
            "health": {"listen": "127.0.0.1:0"},
            "metrics": {"listen": "127.0.0.1:0"},
            "storage": {"dir": str(self.storage_dir)},
            "origin": {"connect_timeout": "2s", "read_timeout": "10s", "retries": 2},
            "log": {"level": "debug"},
        }
        self.root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(yaml.safe_dump(deep_merge(base, self.overrides)))

    def start(self, timeout: float = 20) -> AgentProcess:
        self.write_config()
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                *self.command_prefix,
                sys.executable,
                "-m",
                "dfagent",
                "run",
                "--config",
                str(self.config_path),
                *self.extra_args,
            ],
            stdout=log,
            stderr=log,
            env={**os.environ, "PYTHONASYNCIODEBUG": os.environ.get("PYTHONASYNCIODEBUG", "")},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dfagent exited {self.process.returncode}:\n{self.log()}")
            match = _READY.search(self.log_path.read_text()[offset:])
            if match:
                self.proxy_port = int(match.group(1))
                self.health_port, self.metrics_port = (int(p) for p in match.group(2).split(","))
                self.peer_port = int(match.group(3)) if match.group(3).isdigit() else 0
                return self
            time.sleep(0.05)
        raise RuntimeError(f"dfagent did not become ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def cli(
        self, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run `dfagent ARGS --config <this agent's config>` to the end."""
        return subprocess.run(
            [sys.executable, "-m", "dfagent", *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            timeout=120,
            input=stdin,
            env=os.environ | (env or {}),
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
