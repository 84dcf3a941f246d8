"""Test audio for the source tests, made on the spot (no /work/shared): espeak-ng speech and pure tones."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

RATE = 16000


def synth_speech(path: Path, text: str, voice: str = "en-us+f2", pitch: int = 60) -> np.ndarray:
    """espeak-ng speech as a 16 kHz mono 16-bit WAV at `path` (espeak writes 22.05 kHz, so sox resamples)."""
    espeak = subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", "160", "--stdout", text],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        ["sox", "-t", "wav", "-", "-r", str(RATE), "-c", "1", "-b", "16", str(path), "gain", "-n", "-3"],
        input=espeak.stdout,
        check=True,
        capture_output=True,
    )
    return read_wav(path)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(samples.astype("<i2").tobytes())


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as handle:
        assert handle.getnchannels() == 1 and handle.getsampwidth() == 2
        return np.frombuffer(handle.readframes(handle.getnframes()), dtype="<i2").copy()


def tone(freq_hz: float, seconds: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * 32767 * np.sin(2 * np.pi * freq_hz * t)).astype(np.int16)


def best_alignment(received: np.ndarray, reference: np.ndarray) -> tuple[int, float]:
    """(lag, normalized correlation) of `reference` inside `received`, found with an FFT cross-correlation."""
    rec = received.astype(np.float64)
    ref = reference.astype(np.float64)
    n = len(rec) + len(ref)
    size = 1 << (n - 1).bit_length()
    xcorr = np.fft.irfft(np.fft.rfft(rec, size) * np.conj(np.fft.rfft(ref, size)), size)[: len(rec)]
    lag = int(np.argmax(xcorr))
    window = rec[lag : lag + len(ref)]
    overlap = ref[: len(window)]
    denom = np.linalg.norm(window) * np.linalg.norm(overlap)
    return lag, float(np.dot(window, overlap) / denom) if denom else 0.0


def dominant_frequency(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])
