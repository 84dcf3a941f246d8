"""Consuming a live audio source in a test (camera, radio stream, microphone) while the test acts on what feeds it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import numpy as np
import pytest

from spkidd.audio.backoff import BackoffConfig
from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk, AudioSource
from spkidd.events import SourceStatus

FAST_BACKOFF = BackoffConfig(initial_s=0.2, max_s=1.0, jitter=0.2)
"""Reconnects within a second, so a test sees a source come back without waiting for the daemon's longer backoff."""


class SourceRecorder:
    """Consumes a source in a task, keeping every chunk and status (with when it came), so the test can kill, hang
    or feed the server or the microphone meanwhile."""

    def __init__(self) -> None:
        self.chunks: list[AudioChunk] = []
        self.statuses: list[SourceStatus] = []
        self.status_at: list[float] = []
        """time.monotonic() of each status."""
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self, source: AudioSource) -> SourceRecorder:
        self.task = asyncio.create_task(self._consume(source))
        return self

    def on_status(self, status: SourceStatus) -> None:
        self.statuses.append(status)
        self.status_at.append(time.monotonic())
        self.changed.set()

    async def _consume(self, source: AudioSource) -> None:
        async with contextlib.aclosing(source.chunks()) as chunks:
            async for chunk in chunks:
                self.chunks.append(chunk)
                self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Until `predicate` holds; fails at once when the source ends first."""
        async with asyncio.timeout(timeout_s):
            while not predicate():
                assert self.task is not None
                if self.task.done():
                    self.task.result()
                    raise AssertionError("the source ended")
                self.changed.clear()
                with contextlib.suppress(TimeoutError):  # also re-check counters that set no event
                    await asyncio.wait_for(self.changed.wait(), 0.1)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def audio_of(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.samples for c in chunks])


def assert_timestamps(chunks: list[AudioChunk]) -> None:
    """Every chunk full-sized 16-bit audio, stamped where it sits in the stream (no gaps, no overlaps)."""
    for i, chunk in enumerate(chunks):
        assert chunk.samples.dtype == np.int16 and chunk.samples.shape == (CHUNK_SAMPLES,)
        assert chunk.start_s == pytest.approx(i * CHUNK_SAMPLES / 16000)
