"""The benchmark harness keeps working: every scenario at tiny sizes (figures ignored)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0, reason="the swarm scenarios make network namespaces: root only"
    ),
]


@pytest.mark.timeout(1200)
def test_every_scenario_runs_and_writes_its_report(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=1150,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    (report,) = tmp_path.glob("*.md")  # exit 0 means no scenario failed
    assert "## Summary" in report.read_text()
