"""Decode any audio file to 16 kHz mono float32: soundfile for WAV/FLAC/OGG, an ffmpeg subprocess otherwise (MP3
included, see soundfile_decodes_cleanly)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

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
        stops = f"the audio stops at {len(audio) / SAMPLE_RATE:.2f} s"
        promised = "" if promised_s is None else f" of the {promised_s:.2f} s its header promises"
        super().__init__(f"{path}: damaged (truncated or corrupt): {stops}{promised}")
        self.audio = audio


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
    """Up to `count` frames (-1: all) as mono float32, and whether a decode error cut the file short. Read block by
    block into one array sized from the header, so a long recording is never held twice (a list of blocks and their
    concatenation were two copies at the peak); frames beyond what the header promised are still read. An error
    before the first block is raised: the file may still be something ffmpeg decodes."""
    expected = max(0, handle.frames - handle.tell()) if count < 0 else count
    audio = np.empty(expected, dtype=np.float32)
    filled = 0
    while count < 0 or filled < count:
        want = _BLOCK_FRAMES if count < 0 else min(_BLOCK_FRAMES, count - filled)
        try:
            block = handle.read(frames=want, dtype="float32", always_2d=True)
        except sf.LibsndfileError:
            if filled == 0:
                raise
            return audio[:filled], True
        if len(block) == 0:
            break
        if filled + len(block) > len(audio):
            audio = np.concatenate([audio[:filled], np.empty(max(len(block), len(audio) // 4), dtype=np.float32)])
        audio[filled : filled + len(block)] = block.mean(axis=1)
        filled += len(block)
    return audio[:filled], False


def _read_soundfile(path: Path, start: float, end: float | None) -> np.ndarray:
    with sf.SoundFile(str(path)) as handle:
        if not soundfile_decodes_cleanly(handle):
            raise LeftToFfmpeg(f"{path}: {handle.format} is decoded by ffmpeg")
        rate = handle.samplerate
        first = round(start * rate)
        if first > handle.frames:
            raise AudioDecodeError(f"{path}: start {start:.3f} s is past the end ({handle.frames / rate:.3f} s)")
        handle.seek(first)
        count = -1 if end is None else max(0, round(end * rate) - first)
        frames, cut = _read_frames(handle, count)
        audio = resample(frames, rate)
        if cut:
            raise DamagedAudioError(path, audio, handle.frames / rate)
        if _truncated_by_header(handle) and (end is None or first + len(frames) < round(end * rate)):
            raise DamagedAudioError(path, audio)
    return audio


_PREROLL_S = 0.5
"""Decoded before a range's start and dropped: MP3 and AAC frames lean on the ones before them, and a range that
ffmpeg seeked to directly began with 10-20 ms of silence and garbled sound (23 dB SNR against the same stretch of the
whole file; with the pre-roll the samples are the same)."""


def _read_ffmpeg(path: Path, start: float, end: float | None) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise AudioDecodeError(f"{path}: not WAV/FLAC/OGG, and decoding it needs ffmpeg, which is not installed")
    seek = max(0.0, start - _PREROLL_S)
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{seek:.6f}", "-i", str(path)]
    cmd += ["-ss", f"{start - seek:.6f}"]
    if end is not None:
        cmd += ["-t", f"{max(0.0, end - start):.6f}"]
    cmd += ["-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    reason = proc.stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0:
        said = reason[-1].removeprefix(f"{path}: ") if reason else str(proc.returncode)
        raise AudioDecodeError(f"{path}: ffmpeg could not decode it: {said}")
    audio = np.frombuffer(proc.stdout, dtype=np.int16).astype(np.float32) / 32768.0
    if reason:  # at -loglevel error, anything said while exiting 0 is a decode error mid-file
        raise DamagedAudioError(path, audio)
    return audio


def load_audio(path: Path | str, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """The [start, end) seconds of `path` as 16 kHz mono float32; raises AudioDecodeError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file")
    try:
        audio = _read_soundfile(path, start, end)
    except (sf.LibsndfileError, RuntimeError, TypeError, LeftToFfmpeg):
        audio = _read_ffmpeg(path, start, end)
    _check_range(path, audio, start, end)
    if audio.size == 0:
        raise AudioDecodeError(f"{path}: no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioDecodeError(f"{path}: audio holds NaN or infinite samples")
    return audio


_RANGE_SLACK_S = 0.1
"""How far a range may end past the recording: a manifest's end rounded up, not a wrong one."""


def _check_range(path: Path, audio: np.ndarray, start: float, end: float | None) -> None:
    """A range that ends well past the recording is a wrong manifest row (another file, milliseconds for seconds): a
    row 595-640 s of a 600-s file was scored as its 5 s without a word."""
    if start > 0 and audio.size == 0:
        raise AudioDecodeError(f"{path}: start {start:.3f} s is past the end")
    heard_to = start + len(audio) / SAMPLE_RATE
    if end is not None and end - heard_to > _RANGE_SLACK_S:
        raise AudioDecodeError(f"{path}: end {end:.3f} s is past the end ({heard_to:.3f} s)")
