"""A file played back as a live source: paced in real time for demos and tests, or as fast as possible with
audio-time stamps for benchmarks. Decoding runs in a thread; the chunks are views of one int16 buffer, so many
replays of one decoded file (throughput benchmarks) share their memory."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk, StatusCallback
from spkidd.audio.decode import load_audio
from spkidd.events import SourceStatus

log = logging.getLogger(__name__)

_CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE
_YIELD_EVERY = 16
"""Unpaced replay lets other tasks run this often (in chunks), so one fast file never starves a whole loop."""


def to_chunkable_pcm(audio: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] -> int16, zero-padded to whole chunks."""
    pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    pad = (-len(pcm)) % CHUNK_SAMPLES
    return np.concatenate([pcm, np.zeros(pad, dtype=np.int16)]) if pad else pcm


class ReplaySource:
    """Plays `path` (any format load_audio decodes) once, or forever with `loop`; `start_s` keeps counting."""

    def __init__(
        self,
        name: str,
        path: Path | str,
        *,
        realtime: bool,
        loop: bool = False,
        on_status: StatusCallback | None = None,
    ) -> None:
        self.name = name
        self.path = Path(path)
        self.realtime = realtime
        self.loop = loop
        self.on_status = on_status
        self.started_at: float | None = None
        self._pcm: np.ndarray | None = None

    @classmethod
    def from_samples(
        cls,
        name: str,
        pcm: np.ndarray,
        *,
        realtime: bool,
        loop: bool = False,
        on_status: StatusCallback | None = None,
    ) -> ReplaySource:
        """A replay of already decoded int16 samples, shared without a copy."""
        source = cls(name, f"<{name}>", realtime=realtime, loop=loop, on_status=on_status)
        pad = (-len(pcm)) % CHUNK_SAMPLES
        source._pcm = np.concatenate([pcm, np.zeros(pad, dtype=np.int16)]) if pad else pcm
        return source

    def _status(self, online: bool, detail: str) -> None:
        if self.on_status is not None:
            self.on_status(SourceStatus(self.name, online, detail))

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        pcm = self._pcm
        if pcm is None:
            try:
                pcm = to_chunkable_pcm(await asyncio.to_thread(load_audio, self.path))
            except Exception as exc:
                self._status(False, f"cannot decode {self.path}: {exc}")
                raise
        count = len(pcm) // CHUNK_SAMPLES
        self._status(True, f"replaying {self.path}")
        self.started_at = time.monotonic()
        index = 0
        try:
            while True:
                for i in range(count):
                    if self.realtime:
                        due = self.started_at + (index + 1) * _CHUNK_S
                        delay = due - time.monotonic()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    elif index % _YIELD_EVERY == 0:
                        await asyncio.sleep(0)
                    yield AudioChunk(pcm[i * CHUNK_SAMPLES : (i + 1) * CHUNK_SAMPLES], index * _CHUNK_S)
                    index += 1
                if not self.loop or count == 0:
                    break
        finally:
            self._status(False, "replay ended")
