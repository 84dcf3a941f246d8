"""A file played back as a live source: paced in real time for demos and tests, or as fast as possible with
audio-time stamps for benchmarks. Files are decoded block by block in a thread, so a replay holds seconds of audio,
not the whole recording (soundfile's formats through soundfile, the others through ffmpeg's pipe); `from_samples`
replays already decoded samples, shared without a copy (many streams of one recording in a throughput benchmark)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk, StatusCallback
from spkidd.audio.decode import (
    LEFT_TO_FFMPEG,
    AudioDecodeError,
    AudioStream,
    open_soundfile,
    read_mono,
    resampled,
    stream_resampler,
)
from spkidd.events import SourceStatus

log = logging.getLogger(__name__)

_CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE
_YIELD_EVERY = 16
"""Unpaced replay lets other tasks run this often (in chunks), so one fast file never starves a whole loop."""
_REALTIME_BLOCK_S = 1.0
_FAST_BLOCK_S = 10.0
_EMPTY = np.zeros(0, dtype=np.int16)
_PCM_BLOCK = 1 << 20
_Result = TypeVar("_Result")


def float_to_pcm(audio: np.ndarray, multiple: int = 1) -> np.ndarray:
    """float32 [-1, 1] -> int16 (exact for audio that came from 16-bit files), zero-padded to a multiple of
    `multiple` samples. Converted a block at a time: a recording of an hour is 230 MB as float32, and whole-array
    arithmetic would hold two float temporaries of that size."""
    pcm = np.zeros(-(-len(audio) // multiple) * multiple, dtype=np.int16)
    for start in range(0, len(audio), _PCM_BLOCK):
        piece = audio[start : start + _PCM_BLOCK]
        pcm[start : start + len(piece)] = np.clip(np.round(piece * 32768.0), -32768, 32767)
    return pcm


def to_chunkable_pcm(audio: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] -> int16, zero-padded to whole chunks."""
    return float_to_pcm(audio, CHUNK_SAMPLES)


class ReplaySource:
    """Plays `path` (any format load_audio decodes) once, or forever with `loop`; `start_s` keeps counting.

    Iterating again (a pipeline rebuilt after a failure) resumes where the last iteration stopped, on the same
    time line, so a restart neither replays audio already heard nor restarts its time stamps."""

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
        self.reconnects = 0
        """Always 0: a replay has nothing to reconnect to."""
        self.dropped_chunks = 0
        """Always 0: a replay is read only as fast as it is consumed."""
        self._pcm: np.ndarray | None = None
        self._blocks: Iterable[np.ndarray] | None = None
        self._delivered = 0
        self._pass_chunks = 0
        """Chunks in one pass through the file, once a pass has been completed (0 before)."""

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

    @classmethod
    def from_blocks(cls, name: str, blocks: Iterable[np.ndarray]) -> ReplaySource:
        """One unpaced pass over float32 blocks as they come (a decoded file's AudioStream), so that a long recording
        is never held whole; the chunks from_samples gives of the same samples."""
        source = cls(name, f"<{name}>", realtime=False)
        source._blocks = blocks
        return source

    def _status(self, online: bool, detail: str) -> None:
        if self.on_status is not None:
            self.on_status(SourceStatus(self.name, online, detail))

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        opening = _Opening(self._open)
        try:
            blocks = await asyncio.to_thread(opening.run)
        except asyncio.CancelledError:
            opening.abandon()
            raise
        except Exception as exc:
            self._status(False, self._refusal(exc))
            raise
        self._status(True, f"replaying {self.path}")
        ended = "replay ended"
        index = self._delivered
        skip = self._delivered % self._pass_chunks if self._pass_chunks else self._delivered
        self.started_at = time.monotonic() - index * _CHUNK_S
        try:
            while True:
                rest = _EMPTY
                in_pass = 0
                while True:
                    block = await asyncio.to_thread(blocks.read) if blocks.blocking else blocks.read()
                    if block.size == 0:
                        break
                    buffer = block if rest.size == 0 else np.concatenate([rest, block])
                    whole = len(buffer) - len(buffer) % CHUNK_SAMPLES
                    for start in range(0, whole, CHUNK_SAMPLES):
                        in_pass += 1
                        if skip:
                            skip -= 1
                            continue
                        await self._pace(index)
                        self._delivered = index + 1
                        yield AudioChunk(buffer[start : start + CHUNK_SAMPLES], index * _CHUNK_S)
                        index += 1
                    rest = buffer[whole:]
                if rest.size:
                    in_pass += 1
                    if not skip:
                        await self._pace(index)
                        self._delivered = index + 1
                        yield AudioChunk(
                            np.concatenate([rest, np.zeros(CHUNK_SAMPLES - len(rest), np.int16)]), index * _CHUNK_S
                        )
                        index += 1
                skip = 0
                self._pass_chunks = in_pass
                if not self.loop or in_pass == 0:
                    break
                await asyncio.to_thread(blocks.rewind) if blocks.blocking else blocks.rewind()
        except AudioDecodeError as exc:
            ended = self._refusal(exc)
            raise
        finally:
            blocks.close()
            self._status(False, ended)

    def check(self) -> None:
        """Opens the file as a replay starts (its header read, or through ffmpeg its first block decoded) and closes
        it again: raises AudioDecodeError for a file the replay would refuse at once, in a fraction of a second
        however long the file is. Damage later in the file still shows only where the replay reaches it. Blocking."""
        self._open().close()

    def _refusal(self, exc: Exception) -> str:
        """The status of a file found unusable: on opening, or where a streamed decode ends (damage)."""
        return f"cannot decode {self.path}: {exc}"

    async def _pace(self, index: int) -> None:
        """Real time: chunk `index` is due once its 30 ms have passed since the start (no drift). Unpaced: let
        other tasks run now and then."""
        if self.realtime:
            assert self.started_at is not None
            delay = self.started_at + (index + 1) * _CHUNK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        elif index % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    def _open(self) -> _Blocks:
        if self._pcm is not None:
            return _ArrayBlocks(self._pcm)
        if self._blocks is not None:
            return _IteratedBlocks(iter(self._blocks))
        try:
            return _FileBlocks(self.path, _REALTIME_BLOCK_S if self.realtime else _FAST_BLOCK_S)
        except LEFT_TO_FFMPEG:
            return _FfmpegBlocks(self.path)


class _Blocks(Protocol):
    """Successive int16 blocks of a replay; an empty block marks the end. `blocking`: read/rewind do file I/O."""

    blocking: bool

    def read(self) -> np.ndarray: ...

    def rewind(self) -> None: ...

    def close(self) -> None: ...


class _Opening:
    """Opens a replay's blocks in a worker thread for a consumer that may be cancelled meanwhile (Ctrl-C, a reload
    that removes the source): blocks opened for nobody are closed, whichever of the two ends first, rather than left
    holding their file or their ffmpeg."""

    def __init__(self, open_blocks: Callable[[], _Blocks]) -> None:
        self._open = open_blocks
        self._lock = threading.Lock()
        self._blocks: _Blocks | None = None
        self._abandoned = False

    def run(self) -> _Blocks:
        blocks = self._open()
        with self._lock:
            self._blocks = blocks
            abandoned = self._abandoned
        if abandoned:
            blocks.close()
        return blocks

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            blocks = self._blocks
        if blocks is not None:
            blocks.close()


class _ArrayBlocks:
    """Samples already in memory: one block, shared without a copy."""

    blocking = False

    def __init__(self, pcm: np.ndarray) -> None:
        self._pcm = pcm
        self._done = False

    def read(self) -> np.ndarray:
        if self._done:
            return _EMPTY
        self._done = True
        return self._pcm

    def rewind(self) -> None:
        self._done = False

    def close(self) -> None:
        self._done = True


class _IteratedBlocks:
    """Float blocks from an iterator, as int16. Read in the event loop's thread, not a worker: a decoder closed by a
    Ctrl-C while a worker thread still read from it could crash the process (see _CloseWhenIdle), and a replay this
    one-off is not paced, so a few milliseconds of decoding in the loop hold nothing up."""

    blocking = False

    def __init__(self, blocks: Iterator[np.ndarray]) -> None:
        self._blocks = blocks

    def read(self) -> np.ndarray:
        return float_to_pcm(next(self._blocks, _EMPTY))

    def rewind(self) -> None:
        raise ValueError("blocks as they are decoded are played once, not looped")

    def close(self) -> None:
        """Nothing to close: the iterator's owner closes its decoder."""


class _CloseWhenIdle:
    """Closes a decoder only while no worker thread uses it. A consumer cancelled mid-read (Ctrl-C, a reload that
    removes the source) closes its blocks at once, from the event loop, while a worker thread may still be decoding:
    closing a libsndfile handle under that thread crashed the process. close() then only marks the decoder, and the
    thread closes it when its work is done; work asked for after that is not started."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close: Callable[[], None] | None = close
        self._lock = threading.Lock()
        self._busy = False
        self._closing = False

    def run(self, work: Callable[[], _Result], closed: _Result) -> _Result:
        """work()'s result, or `closed` once the decoder is closed or closing."""
        with self._lock:
            if self._closing:
                return closed
            self._busy = True
        try:
            return work()
        finally:
            with self._lock:
                self._busy = False
                if self._closing:
                    self._shut()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            if not self._busy:
                self._shut()

    def _shut(self) -> None:
        close, self._close = self._close, None
        if close is not None:
            close()


class _DecodedBlocks:
    """A decoder's blocks read in worker threads (blocking): read() and rewind() run `_next` and `_restart` under a
    _CloseWhenIdle, which closes the decoder (`_end_decode`) only while no thread uses it."""

    blocking = True

    def __init__(self) -> None:
        self._guard = _CloseWhenIdle(self._end_decode)

    def read(self) -> np.ndarray:
        return self._guard.run(self._next, _EMPTY)

    def rewind(self) -> None:
        self._guard.run(self._restart, None)

    def close(self) -> None:
        self._guard.close()

    def _next(self) -> np.ndarray:
        raise NotImplementedError

    def _restart(self) -> None:
        raise NotImplementedError

    def _end_decode(self) -> None:
        raise NotImplementedError


class _FileBlocks(_DecodedBlocks):
    """A file soundfile reads, decoded block by block (and resampled by a streaming soxr), so a replay of a long
    recording holds a few seconds of audio rather than all of it. Same samples as load_audio at 16 kHz."""

    def __init__(self, path: Path, block_s: float) -> None:
        self._file = open_soundfile(path)
        self._rate = self._file.samplerate
        self._frames = max(1, int(block_s * self._rate))
        self._resampler = stream_resampler(self._rate)
        self._ended = False
        super().__init__()

    def _end_decode(self) -> None:
        self._file.close()

    def _restart(self) -> None:
        self._file.seek(0)
        self._resampler = stream_resampler(self._rate)
        self._ended = False

    def _next(self) -> np.ndarray:
        while not self._ended:
            data = read_mono(self._file, self._frames)
            last = len(data) < self._frames
            self._ended = last
            data = resampled(self._resampler, data, last)
            if len(data):
                return float_to_pcm(data)
        return _EMPTY


class _FfmpegBlocks(_DecodedBlocks):
    """A file soundfile leaves to ffmpeg (MP3, M4A, ...), decoded a block at a time through an AudioStream (ffmpeg's
    pipe), so a replay of an hour holds seconds of it rather than all of it: the whole file was 230 MB of float32
    and an int16 copy. The chunks are those of the whole file's samples, exactly. A pipe cannot seek: rewind() ends
    the decode (its ffmpeg killed and reaped) and starts another. What load_audio refuses a file for is raised in
    its words: a file ffmpeg cannot decode on opening (the first block is decoded then), damage where the audio
    stops, after the audio before it has been played."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stream: AudioStream
        self._blocks: Iterator[np.ndarray]
        self._first: np.ndarray | None
        self._start()
        super().__init__()

    def _start(self) -> None:
        """A new decode from the start of the file, its first block decoded already."""
        self._stream = AudioStream(self._path)
        self._blocks = iter(self._stream)
        try:
            self._first = self._decoded()
        except BaseException:
            self._stream.close()
            raise

    def _restart(self) -> None:
        self._end_decode()
        self._start()

    def _end_decode(self) -> None:
        self._stream.close()

    def _next(self) -> np.ndarray:
        first, self._first = self._first, None
        return self._decoded() if first is None else first

    def _decoded(self) -> np.ndarray:
        """The next block as int16; at the end, empty, or what finish() says is wrong with the file, raised."""
        block = next(self._blocks, None)
        if block is not None:
            return float_to_pcm(block)
        damage = self._stream.finish()
        if damage:
            raise AudioDecodeError(damage)
        return _EMPTY
