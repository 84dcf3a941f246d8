"""Unit tests of the sources' shared pieces: backoff, the drop-oldest chunk queue, the rechunker."""

from __future__ import annotations

import asyncio
import logging
import random
import threading

import numpy as np
import pytest

from spkidd.audio.backoff import Backoff, BackoffConfig
from spkidd.audio.base import CHUNK_SAMPLES
from spkidd.audio.chunkqueue import ChunkQueue, Rechunker

LOG = logging.getLogger("test.sources")


def test_backoff_grows_to_the_cap_within_jitter_bounds() -> None:
    config = BackoffConfig(initial_s=0.5, max_s=8.0, factor=2.0, jitter=0.25)
    backoff = Backoff(config, random.Random(1))
    bases = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for base in bases:
        delay = backoff.next_delay()
        assert base * 0.75 <= delay <= min(8.0, base * 1.25)
    assert backoff.attempts == len(bases)


def test_backoff_jitter_spreads_retries() -> None:
    delays = {round(Backoff(BackoffConfig(jitter=0.25), random.Random(seed)).next_delay(), 6) for seed in range(20)}
    assert len(delays) > 10
    assert Backoff(BackoffConfig(jitter=0.0)).next_delay() == 0.5


def test_backoff_resets_only_after_a_healthy_connection() -> None:
    backoff = Backoff(BackoffConfig(initial_s=1.0, max_s=30.0, jitter=0.0, reset_after_s=10.0))
    for _ in range(4):
        backoff.next_delay()
    backoff.record_healthy(3.0)
    assert backoff.next_delay() == 16.0
    backoff.record_healthy(10.0)
    assert backoff.next_delay() == 1.0


def test_backoff_survives_a_very_long_outage() -> None:
    backoff = Backoff(BackoffConfig(max_s=30.0, jitter=0.0))
    delays = [backoff.next_delay() for _ in range(2000)]
    assert delays[-1] == 30.0


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"initial_s": 5, "max_s": 1}, {"factor": 0.5}, {"jitter": 1.0}])
def test_backoff_config_rejects_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffConfig(**kwargs)


def chunk(value: int) -> np.ndarray:
    return np.full(CHUNK_SAMPLES, value, dtype=np.int16)


async def test_queue_drops_oldest_and_flags_the_gap(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="test.sources")
    queue = ChunkQueue(3, asyncio.get_running_loop(), LOG)
    for value in range(5):
        queue.put(chunk(value))
    assert len(queue) == 3 and queue.dropped == 2
    got = [await queue.get() for _ in range(3)]
    assert [int(item.samples[0]) for item in got if item] == [2, 3, 4]
    assert [item.gap for item in got if item] == [True, False, False]
    assert "dropped 2 chunks" in caplog.text
    queue.close()
    assert await queue.get() is None


async def test_queue_keeps_a_producers_gap_flag_and_raises_its_error() -> None:
    queue = ChunkQueue(10, asyncio.get_running_loop(), LOG)
    queue.put(chunk(1))
    queue.put(chunk(2), gap=True)
    queue.close(RuntimeError("camera gone"))
    first, second = await queue.get(), await queue.get()
    assert first is not None and not first.gap
    assert second is not None and second.gap
    with pytest.raises(RuntimeError, match="camera gone"):
        await queue.get()


async def test_queue_put_wait_applies_backpressure_instead_of_dropping() -> None:
    queue = ChunkQueue(2, asyncio.get_running_loop(), LOG)

    async def produce() -> None:
        for value in range(10):
            await queue.put_wait(chunk(value))
        queue.close()

    producer = asyncio.create_task(produce())
    values = []
    while (item := await queue.get()) is not None:
        assert len(queue) <= 2
        values.append(int(item.samples[0]))
        await asyncio.sleep(0)
    await producer
    assert values == list(range(10)) and queue.dropped == 0


async def test_queue_wakes_the_loop_from_a_foreign_thread_and_stays_bounded() -> None:
    queue = ChunkQueue(50, asyncio.get_running_loop(), LOG)

    def produce() -> None:
        for value in range(2000):
            queue.put(chunk(value % 1000))
        queue.close()

    thread = threading.Thread(target=produce)
    thread.start()
    received = 0
    async with asyncio.timeout(30):
        while await queue.get() is not None:
            received += 1
            assert len(queue) <= 50
    thread.join()
    assert received + queue.dropped == 2000


def test_rechunker_cuts_exact_chunks_and_keeps_the_rest() -> None:
    rechunker = Rechunker()
    data = np.arange(1000, dtype=np.int16)
    out = rechunker.feed(data[:700]) + rechunker.feed(data[700:])
    assert [len(c) for c in out] == [CHUNK_SAMPLES, CHUNK_SAMPLES]
    assert np.array_equal(np.concatenate(out), data[:960])
    assert np.array_equal(np.concatenate(rechunker.feed(data[:440])), np.concatenate([data[960:], data[:440]]))
