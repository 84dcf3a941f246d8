"""Decode any audio file to 16 kHz mono float32: soundfile for WAV/FLAC/OGG, an ffmpeg subprocess otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from spkidd import SAMPLE_RATE


class AudioDecodeError(Exception):
    """A file that is not usable audio; the message names the file."""


def resample(audio: np.ndarray, rate: int) -> np.ndarray:
    if rate == SAMPLE_RATE:
        return audio.astype(np.float32, copy=False)
    return np.asarray(soxr.resample(audio, rate, SAMPLE_RATE), dtype=np.float32)


def _read_soundfile(path: Path, start: float, end: float | None) -> np.ndarray:
    with sf.SoundFile(str(path)) as handle:
        rate = handle.samplerate
        first = round(start * rate)
        if first > handle.frames:
            raise AudioDecodeError(f"{path}: start {start:.3f} s is past the end ({handle.frames / rate:.3f} s)")
        handle.seek(first)
        count = -1 if end is None else max(0, round(end * rate) - first)
        data = handle.read(frames=count, dtype="float32", always_2d=True)
    return resample(data.mean(axis=1), rate)


def _read_ffmpeg(path: Path, start: float, end: float | None) -> np.ndarray:
    if shutil.which("ffmpeg") is None:
        raise AudioDecodeError(f"{path}: not WAV/FLAC/OGG and ffmpeg is not installed")
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-ss", f"{start:.6f}", "-i", str(path)]
    if end is not None:
        cmd += ["-t", f"{max(0.0, end - start):.6f}"]
    cmd += ["-f", "s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        reason = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AudioDecodeError(f"{path}: ffmpeg could not decode it: {reason[-1] if reason else proc.returncode}")
    return np.frombuffer(proc.stdout, dtype=np.int16).astype(np.float32) / 32768.0


def load_audio(path: Path | str, start: float = 0.0, end: float | None = None) -> np.ndarray:
    """The [start, end) seconds of `path` as 16 kHz mono float32; raises AudioDecodeError if unusable."""
    path = Path(path)
    if not path.is_file():
        raise AudioDecodeError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise AudioDecodeError(f"{path}: empty file")
    try:
        audio = _read_soundfile(path, start, end)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        audio = _read_ffmpeg(path, start, end)
    if audio.size == 0:
        raise AudioDecodeError(f"{path}: no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioDecodeError(f"{path}: audio holds NaN or infinite samples")
    return audio
