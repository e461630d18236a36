"""Which agent a command talks to when it is given no `--config`: the file `$DFAGENT_CONFIG`
names, else `/etc/dfagent/dfagent.yaml` (where the Helm chart mounts it), else the embedded
default, whose storage.dir holds the agent's control socket."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "ConfigChoice", "choose_config"]

CONFIG_ENV = "DFAGENT_CONFIG"
DEFAULT_CONFIG = Path("/etc/dfagent/dfagent.yaml")


@dataclass(frozen=True, slots=True)
class ConfigChoice:
    path: str | None  # None: the embedded default
    looked: tuple[str, ...]  # the places passed over on the way, as a person reads them

    @property
    def named(self) -> str:
        return self.path if self.path is not None else "the embedded default config"


def choose_config(
    explicit: str | None,
    environ: Mapping[str, str] = os.environ,
    default: Path = DEFAULT_CONFIG,
) -> ConfigChoice:
    if explicit is not None:
        return ConfigChoice(explicit, ())
    if environ.get(CONFIG_ENV):
        return ConfigChoice(environ[CONFIG_ENV], ())
    looked = (f"${CONFIG_ENV} (unset)",)
    if default.exists():
        return ConfigChoice(str(default), looked)
    return ConfigChoice(None, (*looked, f"{default} (absent)"))
