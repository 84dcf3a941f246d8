"""Decode any audio file to 16 kHz mono float32: soundfile for WAV/FLAC/OGG, an ffmpeg subprocess otherwise (MP3
included, see soundfile_decodes_cleanly); whole (load_audio) or a block at a time (AudioStream)."""

from __future__ import annotations

import functools
import itertools
import math
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import numpy as np
import soundfile as sf
import soxr

from spkidd import SAMPLE_RATE


class AudioDecodeError(Exception):
    """A file that is not usable audio; the message names the file."""


class DamagedAudioError(AudioDecodeError):
    """A file that stops early (truncated or corrupt mid-way): `audio` holds what decoded before the damage, so a
    caller that can make do with part of it (identify) may, while the others refuse the file."""

    def __init__(self, path: Path, audio: np.ndarray, promised_s: float | None = None) -> None:
        super().__init__(damage_said(path, len(audio), promised_s))
        self.audio = audio


def damage_said(path: Path, samples: int, promised_s: float | None = None) -> str:
    """What a damaged file is told as: where its 16-kHz audio stops, and what its header promised if it says."""
    stops = f"the audio stops at {samples / SAMPLE_RATE:.2f} s"
    promised = "" if promised_s is None else f" of the {promised_s:.2f} s its header promises"
    return f"{path}: damaged (truncated or corrupt): {stops}{promised}"


_WAV_DATA_SIZE = re.compile(r"^data\s*:\s*(\d+) \(should be (\d+)\)", re.MULTILINE)
_STREAMED_SIZES = (0, 0xFFFFFFFF)
"""Data sizes a WAV written to a pipe carries instead of its length: not a sign of damage."""


class LeftToFfmpeg(AudioDecodeError):
    """A file soundfile opens but does not decode cleanly (see soundfile_decodes_cleanly)."""


def soundfile_decodes_cleanly(handle: sf.SoundFile) -> bool:
    """False for MP3. libsndfile 1.2 reads MP3 through mpg123, but read a block at a time, or after a seek, it garbles
    frames of the low-rate MP3s speech comes in (8-24 kHz: voice memos, speech datasets): 0.1-0.3% of the samples,
    26 dB SNR at 8 kHz, and an mpg123 error line on stderr for each, hundreds across a progress bar. ffmpeg decodes
    them cleanly, says when a file is damaged, and keeps its complaints to itself."""
    return handle.format != "MP3"


def _truncated_by_header(handle: sf.SoundFile) -> bool:
    """libsndfile reads a truncated WAV or OGG as a shorter whole file; its log is where the damage shows."""
    log = handle.extra_info
    if "lacks an end-of-stream bit" in log:
        return True
    size = _WAV_DATA_SIZE.search(log)
    return size is not None and int(size[1]) not in _STREAMED_SIZES and int(size[1]) > int(size[2])


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(audio, rate, SAMPLE_RATE), dtype=np.float32)


_BLOCK_FRAMES = 1 << 12


def _read_frames(handle: sf.SoundFile, count: int) -> tuple[np.ndarray, bool]:
    """Up to `count` frames (-1: all) as mono float32, and whether a decode error cut the file short. Read into one
    array sized from the header, so a long recording is never held twice (a list of blocks and their concatenation
    were two copies at the peak); frames beyond what the header promised are still read."""
    expected = max(0, handle.frames - handle.tell()) if count < 0 else count
    audio = np.empty(expected, dtype=np.float32)
    filled = 0
    frames = _FrameBlocks(handle, count)
    while len(block := frames.next()):
        if filled + len(block) > len(audio):
            audio = np.concatenate([audio[:filled], np.empty(max(len(block), len(audio) // 4), dtype=np.float32)])
        audio[filled : filled + len(block)] = block
        filled += len(block)
    return audio[:filled], frames.cut


class _FrameBlocks:
    """`count` frames (-1: all) of a soundfile handle from where it stands, as mono float32 blocks of _BLOCK_FRAMES,
    for load_audio and AudioStream alike, so that damage cuts a file at the same frame however it is read. A decode
    error ends the blocks (`cut`); one before the first block is raised: the file may still be something ffmpeg
    decodes."""

    def __init__(self, handle: sf.SoundFile, count: int) -> None:
        self._handle = handle
        self._count = count
        self.read = 0
        """Frames read so far."""
        self.cut = False

    def next(self) -> np.ndarray:
        """The next block; an empty one at the end, or where a decode error cut the file short."""
        want = _BLOCK_FRAMES if self._count < 0 else min(_BLOCK_FRAMES, self._count - self.read)
        if want == 0 or self.cut:
            return np.zeros(0, dtype=np.float32)
        try:
            block = read_mono(self._handle, want)
        except sf.LibsndfileError:
            if self.read == 0:
                raise
            self.cut = True
            return np.zeros(0, dtype=np.float32)
        self.read += len(block)
        return block


def read_mono(handle: sf.SoundFile, frames: int) -> np.ndarray:
    """The next `frames` frames, channels averaged."""
    return handle.read(frames=frames, dtype="float32", always_2d=True).mean(axis=1)


def open_soundfile(path: Path) -> sf.SoundFile:
    """soundfile's handle on a file it decodes cleanly; raises what load_audio leaves to ffmpeg (LEFT_TO_FFMPEG)."""
    handle = sf.SoundFile(str(path))
    if not soundfile_decodes_cleanly(handle):
        handle.close()
        raise LeftToFfmpeg(f"{path}: {handle.format} is decoded by ffmpeg")
    return handle


def stream_resampler(rate: int) -> soxr.ResampleStream | None:
    """A resampler to 16 kHz that carries its state across blocks (the one-shot resampler's samples exactly); None
    for audio already at 16 kHz."""
    return None if rate == SAMPLE_RATE else soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")


def _read_soundfile(path: Path, start: float, end: float | None) -> np.ndarray:
    with open_soundfile(path) as handle:
        count = _seek_range(path, handle, start, end)
        frames, cut = _read_frames(handle, count)
        audio = resample(frames, handle.samplerate)
        damaged, promised_s = _soundfile_damage(handle, cut, count, len(frames))
        if damaged:
            raise DamagedAudioError(path, audio, promised_s)
    return audio


def _seek_range(path: Path, handle: sf.SoundFile, start: float, end: float | None) -> int:
    """Seeks to the range's first frame, refusing a start past the end of the file; returns how many frames the
    range holds (-1: to the end)."""
    rate = handle.samplerate
    first = round(start * rate)
    if first > handle.frames:
        raise AudioDecodeError(f"{path}: start {start:.3f} s is past the end ({handle.frames / rate:.3f} s)")
    handle.seek(first)
    return -1 if end is None else max(0, round(end * rate) - first)


def _soundfile_damage(handle: sf.SoundFile, cut: bool, count: int, read: int) -> tuple[bool, float | None]:
    """Whether `read` frames of a range of `count` (-1: to the end) stop at damage, and the length the header
    promises when a decode error cut them. A header that promises more than the file holds (_truncated_by_header)
    damages only a range that reaches past where the file stops."""
    if cut:
        return True, handle.frames / handle.samplerate
    return _truncated_by_header(handle) and (count < 0 or read < count), None


_PREROLL_S = 0.5
"""Decoded before a range's start and dropped: MP3 and AAC frames lean on the ones before them, and a range that
ffmpeg seeked to directly began with 10-20 ms of silence and garbled sound (23 dB SNR against the same stretch of the
whole file; with the pre-roll the samples are the same)."""


def _read_ffmpeg(path: Path, start: float, end: float | None) -> np.ndarray:
    proc = subprocess.run(_ffmpeg_command(path, start, end), capture_output=True, check=False)
    damaged = _ffmpeg_verdict(path, proc.returncode, proc.stderr)
    audio = _from_s16le(proc.stdout)
    if damaged:
        raise DamagedAudioError(path, audio)
    return audio


def _ffmpeg_command(path: Path, start: float, end: float | None) -> list[str]:
    if shutil.which("ffmpeg") is None:
        raise AudioDecodeError(f"{path}: not WAV/FLAC/OGG, and decoding it needs ffmpeg, which is not installed")
    seek = max(0.0, start - _PREROLL_S)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{seek:.6f}", "-i", str(path)]
    cmd += ["-ss", f"{start - seek:.6f}"]
    if end is not None:
        cmd += ["-t", f"{max(0.0, end - start):.6f}"]
    return [*cmd, "-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]


def _from_s16le(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.int16).astype(np.float32) / 32768.0


def _ffmpeg_verdict(path: Path, returncode: int, stderr: bytes) -> bool:
    """Whether the file is damaged (ffmpeg exited 0 but said something: at -loglevel error, a decode error
    mid-file); raises AudioDecodeError if ffmpeg failed."""
    reason = stderr.decode(errors="replace").strip().splitlines()
    if returncode != 0:
        said = reason[-1].removeprefix(f"{path}: ") if reason else str(returncode)
        raise AudioDecodeError(f"{path}: ffmpeg could not decode it: {said}")
    return bool(reason)


def load_audio(path: Path | str, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """The [start, end) seconds of `path` as 16 kHz mono float32; raises AudioDecodeError if unusable."""
    path = _existing(path)
    try:
        audio = _read_soundfile(path, start, end)
    except LEFT_TO_FFMPEG:
        audio = _read_ffmpeg(path, start, end)
    _check_range(path, audio.size, start, end)
    _check_samples(path, audio.size, bool(np.all(np.isfinite(audio))))
    return audio


LEFT_TO_FFMPEG = (sf.LibsndfileError, RuntimeError, TypeError, LeftToFfmpeg)
"""What soundfile raises opening (or first reading) a file it cannot decode: ffmpeg then gets it."""


def _existing(path: Path | str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file")
    return path


def _check_samples(path: Path, samples: int, finite: bool) -> None:
    if samples == 0:
        raise AudioDecodeError(f"{path}: no audio samples")
    if not finite:
        raise AudioDecodeError(f"{path}: audio holds NaN or infinite samples")


_RANGE_SLACK_S = 0.1
"""How far a range may end past the recording: a manifest's end rounded up, not a wrong one."""


def _check_range(path: Path, samples: int, start: float, end: float | None) -> None:
    """A range that ends well past the recording is a wrong manifest row (another file, milliseconds for seconds): a
    row 595-640 s of a 600-s file was scored as its 5 s without a word."""
    if start > 0 and samples == 0:
        raise AudioDecodeError(f"{path}: start {start:.3f} s is past the end")
    heard_to = start + samples / SAMPLE_RATE
    if end is not None and end - heard_to > _RANGE_SLACK_S:
        raise AudioDecodeError(f"{path}: end {end:.3f} s is past the end ({heard_to:.3f} s)")


STREAM_BLOCK_S = 10.0
"""Seconds of audio an AudioStream decodes at a time: a few MB, however long the recording."""


class AudioStream:
    """A file, or its [start, end) seconds, decoded a block at a time: the samples load_audio(path, start, end)
    gives, in 16-kHz float32 blocks of about STREAM_BLOCK_S, so that a long recording is never held whole (an hour is
    230 MB as float32; identify of an hour peaked at 630 MB). Opening raises what load_audio raises before it decodes
    (no such file, a start past the end that the header tells). Iterating does not raise on a decode error: the
    blocks end where the audio does, and finish() says then what load_audio would have (so a consumer that runs the
    blocks through an event loop never sees the error mid-way). Iterate once; close it (or use `with`) to stop a
    decoder that is still running."""

    def __init__(self, path: Path | str, start: float = 0.0, end: float | None = None) -> None:
        self.path = _existing(path)
        self.start = start
        self.end = end
        self._decoder: _SoundfileStream | _FfmpegStream
        try:
            self._decoder = _SoundfileStream(self.path, start, end)
        except LEFT_TO_FFMPEG:
            self._decoder = _FfmpegStream(self.path, start, end)
        self.samples = 0
        """16-kHz samples handed out so far."""
        self._decoded = 0
        """16-kHz samples decoded, those after a non-finite block included (load_audio's range check counts them)."""
        self._finite = True

    @property
    def expected_s(self) -> float | None:
        """The range's length as the recording's header or ffprobe tells it (for progress), None if neither does."""
        whole_s = self._decoder.expected_s
        if whole_s is None:
            return None
        return max(0.0, min(whole_s, math.inf if self.end is None else self.end) - self.start)

    def __iter__(self) -> Iterator[np.ndarray]:
        blocks = self._decoder.blocks()
        for block in blocks:
            self._decoded += len(block)
            if not np.all(np.isfinite(block)):
                self._finite = False
                self._decoded += sum(len(rest) for rest in blocks)
                return
            self.samples += len(block)
            yield block

    def finish(self) -> str:
        """Once the blocks have ended: raises AudioDecodeError where load_audio would have refused the file or the
        range; else the message of a damaged file (the blocks held what came before the damage), or "" for an intact
        one."""
        damage = self._decoder.damage(self._decoded)
        if not damage:
            _check_range(self.path, self._decoded, self.start, self.end)
            _check_samples(self.path, self._decoded, self._finite)
        return damage

    def close(self) -> None:
        self._decoder.close()

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


class _SoundfileStream:
    """A file soundfile decodes cleanly, seeked and read as _read_soundfile reads it (_FrameBlocks) and resampled by
    a streaming soxr, which gives the one-shot resampler's samples exactly (tests/test_streamed_decoding.py). Raises
    what load_audio falls back to ffmpeg on, the first block's read error included."""

    def __init__(self, path: Path, start: float, end: float | None) -> None:
        self._path = path
        self._handle = open_soundfile(path)
        try:
            self._count = _seek_range(path, self._handle, start, end)
            self._frames = _FrameBlocks(self._handle, self._count)
            self._first = self._frames.next()
        except BaseException:
            self._handle.close()
            raise
        self._rate = self._handle.samplerate
        self.expected_s: float | None = self._handle.frames / self._rate

    def blocks(self) -> Iterator[np.ndarray]:
        resampler = stream_resampler(self._rate)
        group = round(STREAM_BLOCK_S * self._rate / _BLOCK_FRAMES)
        pending = [self._first]
        ended = len(self._first) == 0
        while True:
            if len(pending) >= group or ended:
                yield from _nonempty(resampled(resampler, np.concatenate(pending), ended))
                pending = []
            if ended:
                return
            block = self._frames.next()
            ended = len(block) == 0
            pending.append(block)

    def damage(self, samples: int) -> str:
        damaged, promised_s = _soundfile_damage(self._handle, self._frames.cut, self._count, self._frames.read)
        return damage_said(self._path, samples, promised_s) if damaged else ""

    def close(self) -> None:
        self._handle.close()


def resampled(resampler: soxr.ResampleStream | None, audio: np.ndarray, last: bool) -> np.ndarray:
    """The next block through a stream_resampler (`last` flushes it)."""
    if resampler is None:
        return audio
    return np.asarray(resampler.resample_chunk(audio, last=last), dtype=np.float32)


def _nonempty(block: np.ndarray) -> Iterator[np.ndarray]:
    if len(block):
        yield block


class _FfmpegStream:
    """ffmpeg's s16le read from its stdout pipe a block at a time, the command load_audio runs (its pre-roll before
    a range included). Its stderr goes to a file, not a pipe: a damaged hour can say more than a pipe holds while its
    stdout is being read."""

    def __init__(self, path: Path, start: float, end: float | None) -> None:
        command = _ffmpeg_command(path, start, end)
        self._path = path
        self._said = tempfile.TemporaryFile()  # noqa: SIM115 -- open while ffmpeg runs; close() closes it
        self._proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._said)

    @functools.cached_property
    def expected_s(self) -> float | None:
        """Asked of ffprobe only when wanted (identify's progress): a looped replay starts a decode each pass."""
        return _ffprobe_seconds(self._path)

    def blocks(self) -> Iterator[np.ndarray]:
        assert self._proc.stdout is not None
        size = 2 * round(STREAM_BLOCK_S * SAMPLE_RATE)
        while data := self._proc.stdout.read(size):
            yield _from_s16le(data)

    def damage(self, samples: int) -> str:
        self._proc.wait()
        self._said.seek(0)
        return (
            damage_said(self._path, samples)
            if _ffmpeg_verdict(self._path, self._proc.returncode, self._said.read())
            else ""
        )

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._said.close()


def _ffprobe_seconds(path: Path) -> float | None:
    """The length ffprobe reads from the container, for progress only (None if it cannot tell)."""
    command = ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", str(path)]
    try:
        said = subprocess.run(command, capture_output=True, text=True, check=False, timeout=30).stdout.strip()
        return float(said)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def whole_or_blocks(blocks: Iterator[np.ndarray], samples: int) -> np.ndarray | Iterator[np.ndarray]:
    """All of a recording of up to `samples` as one array; else an iterator of all its blocks, those read to find
    out first among them (each let go of once handed over): identify and the decode cache hold a short recording
    whole and stream a long one."""
    taken: list[np.ndarray] = []
    held = 0
    for block in blocks:
        taken.append(block)
        held += len(block)
        if held > samples:
            return itertools.chain(_handed_over(taken), blocks)
    return np.concatenate(taken) if taken else np.zeros(0, dtype=np.float32)


def _handed_over(blocks: list[np.ndarray]) -> Iterator[np.ndarray]:
    while blocks:
        yield blocks.pop(0)
