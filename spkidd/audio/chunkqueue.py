"""The buffer between a live source's producer (ffmpeg reader, PortAudio callback) and the pipeline.

A live source cannot slow the room down, so when the consumer falls behind the queue drops the OLDEST audio
(the newest is what the decider should hear), counts it, and flags the next chunk as a discontinuity so the
pipeline closes the utterance instead of gluing two pieces of speech together. Memory stays bounded. Finite
inputs (files) use `put_wait` instead, which waits for room, so no audio is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any

import numpy as np

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk, StatusCallback
from spkidd.events import SourceStatus


@dataclass(frozen=True)
class QueuedChunk:
    samples: np.ndarray
    gap: bool


class ChunkQueue:
    """Bounded drop-oldest queue of CHUNK_SAMPLES int16 arrays.

    `put` may be called from any thread and never waits: a producer thread (PortAudio's callback) only takes a
    short lock and, at most once per wake-up, schedules the consumer with call_soon_threadsafe, so even a stalled
    event loop cannot make memory grow. `get`, `put_wait` and `close` belong to the event loop's thread.
    """

    def __init__(
        self,
        max_chunks: int,
        loop: asyncio.AbstractEventLoop,
        logger: logging.Logger,
        *,
        dropped: int = 0,
        log_interval_s: float = 5.0,
    ) -> None:
        if max_chunks < 1:
            raise ValueError(f"queue_chunks must be >= 1, got {max_chunks}")
        self.max_chunks = max_chunks
        self.dropped = dropped
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._log = logger
        self._log_interval_s = log_interval_s
        self._items: deque[QueuedChunk] = deque()
        self._lock = threading.Lock()
        self._gap_next = False
        self._closed = False
        self._error: BaseException | None = None
        self._wake_scheduled = False
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        self._writable.set()
        self._dropped_logged = dropped
        self._last_drop_log = -float("inf")

    def __len__(self) -> int:
        return len(self._items)

    def put(self, samples: np.ndarray, gap: bool = False) -> None:
        """Append one chunk, dropping the oldest one if full. Safe from any thread; never blocks."""
        with self._lock:
            if self._closed:
                return
            if len(self._items) >= self.max_chunks:
                self._items.popleft()
                self.dropped += 1
                self._gap_next = True
            self._items.append(QueuedChunk(samples, gap))
        self._wake()

    async def put_wait(self, samples: np.ndarray, gap: bool = False) -> None:
        """Append one chunk, waiting for room instead of dropping (for inputs that must not lose audio)."""
        while len(self._items) >= self.max_chunks and not self._closed:
            self._writable.clear()
            await self._writable.wait()
        self.put(samples, gap)

    def close(self, error: BaseException | None = None) -> None:
        """No more chunks: `get` drains what is queued, then raises `error` if given, else returns None."""
        with self._lock:
            self._closed = True
            self._error = error
        self._wake()

    async def get(self) -> QueuedChunk | None:
        """The next chunk (its `gap` set if audio was lost right before it), or None once closed and drained."""
        while True:
            with self._lock:
                if self._items:
                    item = self._items.popleft()
                    gap = item.gap or self._gap_next
                    self._gap_next = False
                    break
                if self._closed:
                    if self._error is not None:
                        raise self._error
                    return None
                self._readable.clear()
            await self._readable.wait()
        self._writable.set()
        self._report_drops()
        return item if gap == item.gap else QueuedChunk(item.samples, gap)

    def _wake(self) -> None:
        if threading.get_ident() == self._loop_thread:
            self._readable.set()
            return
        with self._lock:
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is left to read
            self._loop.call_soon_threadsafe(self._wake_in_loop)

    def _wake_in_loop(self) -> None:
        with self._lock:
            self._wake_scheduled = False
        self._readable.set()

    def _report_drops(self) -> None:
        """Log lost audio at most once per interval so a slow consumer does not also drown the log."""
        if self.dropped == self._dropped_logged:
            return
        now = time.monotonic()
        if now - self._last_drop_log < self._log_interval_s:
            return
        lost = self.dropped - self._dropped_logged
        self._log.warning(
            "consumer fell behind: dropped %d chunks (%.2f s of audio, %d in total)",
            lost,
            lost * CHUNK_SAMPLES / SAMPLE_RATE,
            self.dropped,
        )
        self._dropped_logged = self.dropped
        self._last_drop_log = now


class Rechunker:
    """Cuts arbitrary-length int16 blocks into exact CHUNK_SAMPLES pieces, keeping the remainder for later."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.int16)

    def feed(self, samples: np.ndarray) -> list[np.ndarray]:
        data = np.concatenate([self._pending, samples.astype(np.int16, copy=False)])
        whole = len(data) // CHUNK_SAMPLES * CHUNK_SAMPLES
        self._pending = data[whole:].copy()
        return [data[i : i + CHUNK_SAMPLES].copy() for i in range(0, whole, CHUNK_SAMPLES)]


async def stream_chunks(queue: ChunkQueue, producer: Coroutine[Any, Any, None]) -> AsyncGenerator[AudioChunk, None]:
    """Run `producer` (which fills `queue`) as a task and yield the queue as stamped AudioChunks.

    `start_s` counts delivered samples, so dropped audio never leaves holes in the timeline; closing the
    iterator (or cancelling its consumer) cancels the producer and waits for its clean-up (streams closed,
    processes reaped) before returning.
    """
    runner = asyncio.create_task(producer)
    delivered = 0
    try:
        while (item := await queue.get()) is not None:
            yield AudioChunk(item.samples, delivered / SAMPLE_RATE, item.gap)
            delivered += CHUNK_SAMPLES
    finally:
        runner.cancel()
        await asyncio.wait([runner])


class QueuedSource:
    """What every live source shares: its health, reported to `on_status` on transitions only, and the counters
    of the drop-oldest queue between its producer and the pipeline."""

    def __init__(self, name: str, on_status: StatusCallback | None, log: logging.Logger) -> None:
        self.name = name
        self._on_status = on_status
        self._online: bool | None = None
        self._queue: ChunkQueue | None = None
        self._log = log

    @property
    def dropped_chunks(self) -> int:
        return self._queue.dropped if self._queue is not None else 0

    @property
    def queued_chunks(self) -> int:
        """Chunks waiting for the consumer right now (never more than the queue's bound)."""
        return len(self._queue) if self._queue is not None else 0

    @property
    def online(self) -> bool:
        return bool(self._online)

    def _set_status(self, online: bool, detail: str) -> None:
        """Report transitions only; a failing callback is logged, never allowed to stop the audio."""
        if self._online == online:
            return
        self._online = online
        if self._on_status is None:
            return
        try:
            self._on_status(SourceStatus(self.name, online, detail))
        except Exception:
            self._log.exception("status callback failed")
