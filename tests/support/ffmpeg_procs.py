"""Which ffmpeg processes are children of this test process, and in which state (to prove none is a zombie)."""

from __future__ import annotations

import os
from pathlib import Path


def ffmpeg_children() -> dict[int, str]:
    """pid -> state letter ('S', 'R', 'Z', ...) for each ffmpeg whose parent is this process."""
    found: dict[int, str] = {}
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        state, ppid = text[text.rindex(")") + 2 :].split()[:2]
        if name == "ffmpeg" and int(ppid) == me:
            found[int(stat.parent.name)] = state
    return found
