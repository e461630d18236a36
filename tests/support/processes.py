"""Ending the programs tests and benchmarks start."""

from __future__ import annotations

import subprocess


def end(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """Stop `process`: SIGTERM, and SIGKILL if it has not exited within `grace` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
