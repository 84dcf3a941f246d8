"""Augmentation so a model trained on clean recordings survives kitchens and living rooms: gain, synthetic
reverberation, additive noise at a random SNR (generated coloured noise or the user's own noise clips), and
SpecAugment masks on the features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spkidd import SAMPLE_RATE
from spkidd.audio.decode import resample

STRANGER_SPEEDS = (0.85, 1.18)
"""Speeds at which a voice sounds like somebody else enough to stand in for a stranger when the unknown threshold
is calibrated. Trained voices make poor impostors (the network has learned to push them apart): calibrated on
their validation audio, a 5% target let 12% of real strangers through on LibriSpeech (E1); on these, 7.1%. This
holds only while the network was not taught that a change of speed makes another speaker: trained with speed-changed
copies as extra classes, the same calibration let 29% through."""


@dataclass(frozen=True)
class AugmentSettings:
    noise_prob: float = 0.25
    snr_db: tuple[float, float] = (15.0, 35.0)
    reverb_prob: float = 0.1
    rt60_s: tuple[float, float] = (0.15, 0.6)
    gain_db: float = 6.0
    time_masks: int = 1
    time_mask_frac: float = 0.05
    freq_masks: int = 1
    freq_mask_width: int = 4


def coloured_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """White, pink or brown noise: white noise shaped by 1/f^alpha in the frequency domain. Shaped at the next
    power of two and cut to `n`: an FFT of a length with a large prime factor took up to 60 times as long, and
    training's joined sequences have arbitrary lengths (a third of P1's encoding went into this noise)."""
    alpha = rng.choice([0.0, 1.0, 2.0])
    size = 1 << max(n - 1, 1).bit_length()
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.maximum(np.fft.rfftfreq(size), 1.0 / size)
    noise = np.fft.irfft(spectrum / freqs ** (alpha / 2.0), size)[:n]
    return (noise / (np.std(noise) + 1e-9)).astype(np.float32)


def synthetic_rir(rt60: float, rng: np.random.Generator) -> np.ndarray:
    """A room impulse response: a direct path then exponentially decaying noise (60 dB down after rt60)."""
    length = int(rt60 * SAMPLE_RATE)
    t = np.arange(length) / SAMPLE_RATE
    tail = rng.standard_normal(length) * np.exp(-6.9 * t / rt60)
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0
    rir = np.concatenate([[1.0], 0.3 * tail])
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


class Augmenter:
    def __init__(
        self,
        settings: AugmentSettings,
        rng: np.random.Generator,
        noise_clips: list[np.ndarray] | None = None,
    ) -> None:
        self.settings = settings
        self.rng = rng
        self.noise_clips = [c for c in (noise_clips or []) if len(c) > 0]
        self.strength = 1.0
        """0..1: scales every augmentation's probability; training anneals it to 0 towards the end."""

    def _noise(self, n: int) -> np.ndarray:
        if self.noise_clips and self.rng.random() < 0.7:
            clip = self.noise_clips[int(self.rng.integers(len(self.noise_clips)))]
            reps = int(np.ceil(n / len(clip))) + 1
            offset = int(self.rng.integers(len(clip)))
            piece = np.tile(clip, reps)[offset : offset + n]
            return piece / (np.std(piece) + 1e-9)
        return coloured_noise(n, self.rng)

    def waveform(self, audio: np.ndarray) -> np.ndarray:
        s, rng = self.settings, self.rng
        x = audio.astype(np.float32, copy=True)
        if rng.random() < s.reverb_prob * self.strength:
            rir = synthetic_rir(float(rng.uniform(*s.rt60_s)), rng)
            x = _fft_convolve(x, rir)
        if rng.random() < s.noise_prob * self.strength:
            snr = float(rng.uniform(*s.snr_db))
            power = float(np.mean(x**2)) + 1e-10
            x = x + self._noise(len(x)) * np.sqrt(power / 10 ** (snr / 10.0))
        x = x * np.float32(10 ** (rng.uniform(-s.gain_db, s.gain_db) * self.strength / 20.0))
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        return (x / peak * 0.99 if peak > 0.99 else x).astype(np.float32)

    def spec_augment(self, feats: torch.Tensor, lengths: list[int], fill: torch.Tensor) -> torch.Tensor:
        """Time and frequency masks in place of the per-channel mean `fill` (zero after normalization)."""
        s, rng = self.settings, self.rng
        out = feats.clone()
        n_features = feats.shape[2]
        for b, length in enumerate(lengths):
            if rng.random() >= self.strength:
                continue
            for _ in range(s.time_masks):
                width = int(rng.integers(0, max(1, int(length * s.time_mask_frac)) + 1))
                if width and length > width:
                    start = int(rng.integers(0, length - width))
                    out[b, start : start + width] = fill
            for _ in range(s.freq_masks):
                width = int(rng.integers(0, s.freq_mask_width + 1))
                if width and n_features > width:
                    start = int(rng.integers(0, n_features - width))
                    out[b, :length, start : start + width] = fill[start : start + width]
        return out


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """`audio` played `factor` times faster (shorter, higher in pitch and formants): read as if recorded at
    `factor` times the sample rate, then resampled to it."""
    return resample(audio, round(SAMPLE_RATE * factor))


def _fft_convolve(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    n = len(x) + len(kernel) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(kernel, size), size)[: len(x)]
    return y.astype(np.float32)
