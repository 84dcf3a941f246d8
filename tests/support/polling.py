"""Waiting for a condition on the event loop, with a deadline, instead of a fixed sleep that races what it waits
for (the synchronous twin, for threads and Selenium, is tests.support.browser.wait_until)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable


async def until(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 60.0, every_s: float = 0.02
) -> None:
    """Polls `check` on the event loop (what it waits for runs there meanwhile) until it holds. An async `check`
    can do its blocking work (an HTTP request) off the loop; `every_s` spaces out such costlier checks."""
    deadline = time.monotonic() + timeout_s
    while True:
        held = check()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        await asyncio.sleep(every_s)
