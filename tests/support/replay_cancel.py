"""Child process for tests/test_replay.py: replays a file and cancels its consumer mid-read, many times.
Run as `python -m tests.support.replay_cancel FILE CYCLES`; a crash of the decoder kills this process, not pytest."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from pathlib import Path

from spkidd.audio.replay import ReplaySource


async def consume(source: ReplaySource) -> None:
    async for _ in source.chunks():
        pass


async def cycles(path: Path, count: int) -> None:
    rng = random.Random(0)
    for _ in range(count):
        task = asyncio.create_task(consume(ReplaySource("cut", path, realtime=False)))
        await asyncio.sleep(rng.uniform(0.0, 0.03))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


if __name__ == "__main__":
    asyncio.run(cycles(Path(sys.argv[1]), int(sys.argv[2])))
    print("survived")
