"""What every live source delivers: fixed-size PCM chunks stamped with audio time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from spkidd.events import SourceStatus

CHUNK_SAMPLES = 480
"""30 ms at 16 kHz: a frame size webrtcvad accepts, and small enough for low latency."""


@dataclass(frozen=True)
class AudioChunk:
    """`samples`: int16 mono 16 kHz, CHUNK_SAMPLES long. `start_s`: audio seconds since the source started,
    counted over delivered samples. `discontinuity`: the first chunk after a gap (reconnect or dropped audio),
    so the pipeline closes any open utterance instead of gluing two pieces of speech together."""

    samples: np.ndarray
    start_s: float
    discontinuity: bool = False


StatusCallback = Callable[[SourceStatus], None]


class AudioSource(Protocol):
    """An async iterator of chunks that reconnects on its own; it ends only when the audio really ends."""

    name: str
    reconnects: int
    """How many times the source reopened its audio (health and metrics count these, not every gap)."""

    @property
    def dropped_chunks(self) -> int:
        """Chunks the source's own queue lost because its consumer lagged (a live source cannot be held back)."""
        ...

    def chunks(self) -> AsyncIterator[AudioChunk]: ...
