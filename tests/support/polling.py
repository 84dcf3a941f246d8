"""Waiting for a condition on the event loop, with a deadline, instead of a fixed sleep that races what it waits
for (the synchronous twin, for threads and Selenium, is tests.support.browser.wait_until)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    """Polls `check` on the event loop (what it waits for runs there meanwhile) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        await asyncio.sleep(0.02)
