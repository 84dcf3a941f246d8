"""Notices the model file replaced from outside the daemon (`spkidd enroll`, `spkidd forget`, a new `spkidd train
--out` onto it), so that a household's new voice is named from its next utterance without a SIGHUP.

The file is polled, not watched by inotify: the daemon's own writes and `save_model` replace it by a rename, which
changes its inode, and a stat every two seconds costs nothing beside the audio. A change is acted on once it has
stayed the same for one more poll, so a copy still being written by a tool that does not rename is not read half
done.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FileSignature:
    inode: int
    mtime_ns: int
    size: int


def signature(path: Path) -> FileSignature | None:
    """None while there is no file (between a writer's unlink and rename, or removed)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return FileSignature(stat.st_ino, stat.st_mtime_ns, stat.st_size)


class ModelFileWatch:
    """Calls `changed` when the file at `path` is no longer the one last remembered (`remember`, after the daemon
    loaded or wrote it itself) and has settled."""

    def __init__(self, path: Path, changed: Callable[[], Awaitable[None]], interval_s: float = 2.0) -> None:
        self.path = path
        self.changed = changed
        self.interval_s = interval_s
        self._seen = signature(path)
        self._settling: FileSignature | None = None

    def remember(self) -> None:
        """The file as it is now is the daemon's own: no reason to read it again (one stat, microseconds)."""
        self._seen = signature(self.path)
        self._settling = None

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            now = await asyncio.to_thread(signature, self.path)
            if now is None or now == self._seen:
                self._settling = None
                continue
            if now != self._settling:
                self._settling = now
                continue
            self._seen, self._settling = now, None
            await self.changed()
