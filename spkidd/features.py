"""Log-mel and MFCC features on `torch.stft`, one implementation for training, `identify` and the daemon.

Frames are taken without centring (frame i covers samples [i*hop, i*hop + win)), so a frame depends only on
the samples it covers and a streaming extractor that carries the unconsumed tail gives exactly the offline
frames.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from spkidd import SAMPLE_RATE

FeatureKind = Literal["logmel", "mfcc"]


@dataclass(frozen=True)
class FeatureParams:
    """Everything that determines the features; stored in the model file so the daemon reproduces training."""

    kind: FeatureKind = "logmel"
    sample_rate: int = SAMPLE_RATE
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 40
    n_mfcc: int = 20
    fmin: float = 20.0
    fmax: float = 7600.0
    log_floor: float = 1e-6

    def __post_init__(self) -> None:
        if self.kind not in ("logmel", "mfcc"):
            raise ValueError(f"unknown feature kind {self.kind!r}")

    @property
    def n_features(self) -> int:
        return self.n_mfcc if self.kind == "mfcc" else self.n_mels

    def n_frames(self, n_samples: int) -> int:
        """How many whole frames `n_samples` samples hold."""
        if n_samples < self.win_length:
            return 0
        return 1 + (n_samples - self.win_length) // self.hop_length

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Triangular HTK-scale filters, shape (n_fft // 2 + 1, n_mels), each normalized to unit area."""
    n_bins = params.win_length // 2 + 1
    bin_hz = np.linspace(0.0, params.sample_rate / 2.0, n_bins)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array(params.fmin)), _hz_to_mel(np.array(params.fmax)), params.n_mels + 2)
    )
    bank = np.zeros((n_bins, params.n_mels), dtype=np.float64)
    for m in range(params.n_mels):
        lo, mid, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (bin_hz - lo) / max(mid - lo, 1e-9)
        falling = (hi - bin_hz) / max(hi - mid, 1e-9)
        bank[:, m] = np.clip(np.minimum(rising, falling), 0.0, None)
        area = bank[:, m].sum()
        if area > 0:
            bank[:, m] /= area
    return bank.astype(np.float32)


def dct_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Orthonormal DCT-II, shape (n_in, n_out), turning log-mel into MFCC."""
    n = np.arange(n_in)
    k = np.arange(n_out)
    basis = np.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    basis[:, 0] *= 1.0 / math.sqrt(2.0)
    return basis.astype(np.float32)


class FeatureExtractor:
    """Turns 16 kHz float waveforms into feature frames; works on one buffer or a batch."""

    def __init__(self, params: FeatureParams) -> None:
        if params.win_length > params.sample_rate or params.hop_length <= 0:
            raise ValueError("window and hop must be positive and shorter than a second")
        self.params = params
        self._window = torch.hann_window(params.win_length, periodic=True)
        self._mel = torch.from_numpy(mel_filterbank(params))
        self._dct = torch.from_numpy(dct_matrix(params.n_mels, params.n_mfcc)) if params.kind == "mfcc" else None

    def batch(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, N) float waveforms -> (B, frames, n_features); differentiable-free, no centring."""
        p = self.params
        if waveforms.shape[-1] < p.win_length:
            return waveforms.new_zeros((waveforms.shape[0], 0, p.n_features))
        spec = torch.stft(
            waveforms,
            n_fft=p.win_length,
            hop_length=p.hop_length,
            win_length=p.win_length,
            window=self._window,
            center=False,
            return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()
        mel = torch.matmul(power.transpose(1, 2), self._mel)
        feats = torch.log(torch.clamp(mel, min=p.log_floor))
        if self._dct is not None:
            feats = torch.matmul(feats, self._dct)
        return feats

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """One mono float32 waveform -> (frames, n_features) float32."""
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None, :]
            return self.batch(x)[0].numpy()


class StreamingFeatures:
    """Incremental frames from chunks of any size, equal to the offline frames of the concatenated audio."""

    def __init__(self, extractor: FeatureExtractor) -> None:
        self._extractor = extractor
        self._pending = np.zeros(0, dtype=np.float32)

    def reset(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Adds float32 samples; returns the frames that became complete, shape (n, n_features)."""
        p = self._extractor.params
        buffer = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32)])
        n = p.n_frames(len(buffer))
        if n == 0:
            self._pending = buffer
            return np.zeros((0, p.n_features), dtype=np.float32)
        frames = self._extractor(buffer[: (n - 1) * p.hop_length + p.win_length])
        self._pending = buffer[n * p.hop_length :]
        return frames


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    """PCM int16 -> float32 in [-1, 1)."""
    return samples.astype(np.float32) / 32768.0
