"""`dfagent preheat`: hand a preheat job to this node's agent and follow it to the end."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dfagent.control import call_agent
from dfagent.errors import DfagentError
from dfagent.preheat.request import PreheatRequest
from dfagent.tools.text import human_size

__all__ = ["NoAgent", "describe_job", "follow", "submit"]

_POLL_SECONDS = 0.5


class NoAgent(DfagentError):
    pass


async def submit(directory: Path, request: PreheatRequest) -> dict[str, Any]:
    """Hand the job to the agent on `directory`; the job as it starts."""
    job = await call_agent(directory, "POST", "/api/v1/preheat", request.to_json())
    if job is None:
        raise NoAgent(f"no agent runs on {directory}")
    return job


async def follow(directory: Path, job: dict[str, Any], *, progress: bool) -> dict[str, Any]:
    """Poll the job until it has succeeded or failed; its final state."""
    bar = tqdm(
        total=None, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
        file=sys.stderr, desc=job["id"],
    )  # fmt: skip
    with bar:
        while job["state"] not in ("succeeded", "failed"):
            await asyncio.sleep(_POLL_SECONDS)
            answer = await call_agent(directory, "GET", f"/api/v1/preheat/{job['id']}")
            if answer is None:
                raise NoAgent("the agent stopped before the preheat finished")
            job = answer
            bar.total = job["bytes"] or None
            bar.update(job["cached_bytes"] - bar.n)
    return job


def describe_job(job: dict[str, Any]) -> str:
    platforms = job["platforms"] if job["platforms"] == "all" else ", ".join(job["platforms"])
    lines = [
        f"preheat {job['id']} {job['state']}: {job['image']} ({platforms}), "
        f"{len(job['blobs'])} blobs, {human_size(job['bytes'])}"
    ]
    if job["error"]:
        lines.append(f"  error: {job['error']}")
    for blob in job["blobs"]:
        peers = blob["peers"]
        done = sum(1 for state in peers.values() if state == "done")
        spread = f"  on {done}/{len(peers)} peers" if peers else ""
        lines.append(
            f"  {blob['digest'][:19]}…  {human_size(blob['size']):>10}  {blob['state']}{spread}"
        )
        if blob["error"]:
            lines.append(f"    {blob['error']}")
        lines += [f"    {peer}: {state}" for peer, state in peers.items() if state != "done"]
    return "\n".join(lines)
