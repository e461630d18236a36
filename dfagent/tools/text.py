"""How the command line shows things to people."""

from __future__ import annotations

import time
from typing import Any

__all__ = ["describe_gc", "describe_status", "describe_verify", "human_size"]


def human_size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.1f} {unit}" if unit != "B" else f"{int(count)} B"
        count /= 1024
    return f"{count:.1f} TiB"


def describe_status(status: dict[str, Any]) -> str:
    agent = status["agent"]
    lines = [
        f"agent    running, pid {agent['pid']}, proxy {agent['proxy']}"
        if agent
        else "agent    not running",
        f"storage  {status['dir']}",
        f"usage    {human_size(status['stored'])} of {human_size(status['quota'])} quota "
        f"({status['usage']:.1%}), {status['pieces']} pieces",
        f"blobs    {status['blobs']} ({status['verified_blobs']} verified, "
        f"{status['partial_blobs']} partial)",
    ]
    for title, key in (("largest", "largest"), ("recently read", "recent")):
        if status[key]:
            lines.append(f"{title}:")
        for blob in status[key]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(blob["last_access"]))
            state = (
                "verified"
                if blob["verified"]
                else f"{blob['stored'] * 100 // max(blob['size'], 1)}%"
            )
            stored, size = human_size(blob["stored"]), human_size(blob["size"])
            chunks = (
                f"  chunks {blob['chunks_verified']}/{blob['chunks']} proven"
                if blob.get("chunk_mapped")
                else ""
            )
            lines.append(
                f"  {blob['digest'][:19]}…  {stored:>10} of {size:>10}  {state:>8}  read {when}"
                + chunks
            )
    if status["preheat"]:
        lines.append("preheat jobs:")
    for job in status["preheat"]:
        done = f"{human_size(job['cached_bytes'])} of {human_size(job['bytes'])}"
        lines.append(f"  {job['id']}  {job['state']:>10}  {done}  {job['image']}")
        if job["error"]:
            lines.append(f"    {job['error']}")
    return "\n".join(lines)


def describe_gc(report: dict[str, Any]) -> str:
    evicted = report["evicted_for_age"] + report["evicted_for_quota"]
    return (
        f"evicted {evicted} blobs ({report['evicted_for_age']} unread for storage.max_age, "
        f"{report['evicted_for_quota']} over the quota), freed {human_size(report['freed'])}; "
        f"{human_size(report['stored'])} stored"
    )


def describe_verify(report: dict[str, Any]) -> str:
    speed = f", {report['mb_per_second']} MB/s" if report["mb_per_second"] else ""
    checked = (
        f"checked {report['pieces']} pieces ({human_size(report['bytes'])}) "
        f"in {report['seconds']:.1f} s{speed}"
    )
    bad = report["bad"]
    if not bad:
        return f"{checked}: every piece matches its sha256"
    fate = (
        "dropped: each is fetched again when next read"
        if report["repaired"]
        else "dfagent verify --repair drops them"
    )
    lines = [f"{checked}: {len(bad)} corrupt ({fate})"]
    lines += [f"  {piece['digest'][:19]}…  piece {piece['piece']}" for piece in bad]
    return "\n".join(lines)
