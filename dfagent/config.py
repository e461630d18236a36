"""The agent's whole config: one frozen dataclass per section, loaded once from YAML."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from dfagent.configload import build, to_plain
from dfagent.configtypes import ListenAddress
from dfagent.engine.config import AuthConfig
from dfagent.errors import ConfigError
from dfagent.origin.config import OriginConfig
from dfagent.proxy.config import ProxyConfig
from dfagent.storage.config import StorageConfig
from dfagent.swarm.config import PeerConfig, SwarmConfig
from dfagent.swarm.dragonfly.config import DragonflyConfig

__all__ = ["Config", "HealthConfig", "LogConfig", "MetricsConfig", "dump", "load", "parse"]


@dataclass(frozen=True, slots=True)
class HealthConfig:
    listen: ListenAddress = ListenAddress("0.0.0.0", 4003)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: ListenAddress = ListenAddress("0.0.0.0", 4002)


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"


@dataclass(frozen=True, slots=True)
class Config:
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    origin: OriginConfig = field(default_factory=OriginConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    peer: PeerConfig = field(default_factory=PeerConfig)
    swarm: SwarmConfig = field(default_factory=SwarmConfig)
    dragonfly: DragonflyConfig = field(default_factory=DragonflyConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.swarm.mode == "dragonfly" and not self.dragonfly.schedulers:
            problems.append(("dragonfly.schedulers", "at least one is required in dragonfly mode"))
        if self.swarm.mode == "dragonfly" and (self.swarm.peers or self.swarm.dns):
            problems.append(("swarm.mode", "dragonfly mode has no builtin peers or dns"))
        return problems


def parse(text: str) -> Config:
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, ValueError, RecursionError) as exc:  # an int past 4300 digits, …
        raise ConfigError([("<file>", f"not valid YAML: {exc}")]) from None
    return build(Config, data)


def load(path: str | Path | None) -> Config:
    """The config in `path`, or the embedded default (single node, local cache) for None."""
    if path is None:
        return Config()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([("<file>", f"cannot read config {path}: {exc.strerror}")]) from None
    except UnicodeDecodeError as exc:
        reason = f"cannot read config {path}: not UTF-8 text (byte {exc.start})"
        raise ConfigError([("<file>", reason)]) from None
    return parse(text)


def dump(config: Config) -> str:
    return yaml.safe_dump(to_plain(config), sort_keys=False)
