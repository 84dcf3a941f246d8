"""Process accounting for failure-path tests: a daemon's descendants while it runs, and which of them outlived it
(an embedded mosquitto runs in its own process group, so a daemon that dies badly can leave it behind)."""

from __future__ import annotations

import os
from pathlib import Path


def _parents() -> dict[int, int]:
    out: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        out[int(stat.parent.name)] = int(text[text.rindex(")") + 2 :].split()[1])
    return out


def descendants(pid: int) -> set[int]:
    """Every process below `pid` now."""
    parents = _parents()
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (zombies of a dead parent count: nobody reaps them)."""
    return {pid for pid in pids if os.path.exists(f"/proc/{pid}")}


def command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
