"""Reaching the agent's control socket as a user who may not."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfagent import cli
from dfagent.control import AgentNotPermitted, call_agent


def _owner_only(self: Path, *args: object, **kwargs: object) -> bool:
    raise PermissionError(13, "Permission denied", str(self))  # what stat says to other users


async def test_a_socket_in_an_owner_only_directory_is_named(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "exists", _owner_only)
    with pytest.raises(AgentNotPermitted, match="owner-only: run this as the agent's user"):
        await call_agent(tmp_path, "GET", "/status")


@pytest.mark.parametrize("command", [["preheat", "127.0.0.1:5000/app:1"], ["status"]])
def test_the_cli_says_so_in_one_line(command, tmp_path, monkeypatch, capsys):
    config = tmp_path / "dfagent.yaml"
    config.write_text(f"storage: {{dir: {tmp_path}}}\n")
    monkeypatch.setattr(Path, "exists", _owner_only)
    assert cli.main([*command, "-c", str(config)]) == 1
    reason = f"{tmp_path} is owner-only: run this as the agent's user (or root)"
    assert capsys.readouterr().err == f"dfagent {command[0]}: {reason}\n"
