"""A background task that follows a live feed (MQTT messages, Home Assistant's state changes) for a test, and
reconnects after an outage, so a test sees everything across broker or Home Assistant restarts."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Self


class Follower:
    """`async with` returns once the first subscription is in place; `_follow` connects, subscribes (then sets
    `_subscribed`) and records until the connection drops with one of `transient`."""

    transient: tuple[type[BaseException], ...] = ()
    retry_s = 0.1
    subscribe_timeout_s = 10.0

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._subscribed.wait(), self.subscribe_timeout_s)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(*self.transient):
                await self._follow()
            self._subscribed.clear()
            await asyncio.sleep(self.retry_s)

    async def _follow(self) -> None:
        raise NotImplementedError
