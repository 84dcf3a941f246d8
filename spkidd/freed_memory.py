"""Giving the memory a replaced model freed back to the system.

glibc keeps what Python and torch free in its heaps, and each replaced model (a reload, an enrollment on the page, a
new model file) leaves holes there: after 359 reloads (`benchmarks/soak.py --paced --hup-every 0.5 --hup-for 3`) the
daemon stayed at 335 MB; trimmed after the last one, it went back to 294 MB. malloc_trim takes well under a
millisecond. Only glibc has it; elsewhere nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def trim_freed_memory() -> bool:
    """True when glibc gave memory back to the system."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    return bool(trim(0))


class TrimAfterModelChanges:
    """One trim `delay_s` after a model change, when the streams have finished the utterances that still used the
    old model. Changes while a trim is due share it, and one more follows if any came after it was set, so the last
    change is always followed by a trim, however often they come. The trim runs in a worker thread."""

    def __init__(self, delay_s: float, trim: Callable[[], bool] = trim_freed_memory) -> None:
        self.delay_s = delay_s
        self.trims = 0
        self._trim = trim
        self._due: asyncio.TimerHandle | None = None
        self._changed_since_due = False
        self._running: asyncio.Task[bool] | None = None

    def model_changed(self) -> None:
        if self._due is not None:
            self._changed_since_due = True
            return
        self._due = asyncio.get_running_loop().call_later(self.delay_s, self._start)

    def _start(self) -> None:
        self._due = None
        self._running = asyncio.create_task(asyncio.to_thread(self._trim), name="trim-freed-memory")
        self._running.add_done_callback(self._done)
        if self._changed_since_due:
            self._changed_since_due = False
            self.model_changed()

    def _done(self, task: asyncio.Task[bool]) -> None:
        if task.cancelled():
            return
        self.trims += 1
        log.debug("freed memory after a model change %s", "returned" if task.result() else "was already returned")

    async def close(self) -> None:
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self._running is not None:
            await asyncio.gather(self._running, return_exceptions=True)
