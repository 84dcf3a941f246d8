"""Log-mel, MFCC and mel-power features on `torch.stft`, one implementation for training, `identify` and the daemon.

`melpower` is what the pretrained GE2E encoder was trained on (librosa's Slaney mel power, no log), with the frame's
mean square appended as a last column so the encoder can normalize loudness causally.

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

FeatureKind = Literal["logmel", "mfcc", "melpower"]
MelScale = Literal["htk", "slaney"]


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
    mel_scale: MelScale = "htk"

    def __post_init__(self) -> None:
        if self.kind not in ("logmel", "mfcc", "melpower"):
            raise ValueError(f"unknown feature kind {self.kind!r}")
        if self.mel_scale not in ("htk", "slaney"):
            raise ValueError(f"unknown mel scale {self.mel_scale!r}")

    @property
    def n_features(self) -> int:
        if self.kind == "mfcc":
            return self.n_mfcc
        return self.n_mels + 1 if self.kind == "melpower" else self.n_mels

    @property
    def hop_s(self) -> float:
        """Seconds between frames."""
        return self.hop_length / self.sample_rate

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


def _hz_to_slaney(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's auditory-toolbox scale: linear below 1 kHz, logarithmic above (librosa's default)."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, linear)


def _slaney_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, linear)


def slaney_filterbank(params: FeatureParams) -> np.ndarray:
    """Slaney-scale, Slaney-normalized triangles as librosa builds them (the GE2E encoder was trained on these),
    shape (n_fft // 2 + 1, n_mels)."""
    n_bins = params.win_length // 2 + 1
    bin_hz = np.linspace(0.0, params.sample_rate / 2.0, n_bins)
    edges = _slaney_to_hz(np.linspace(_hz_to_slaney(params.fmin), _hz_to_slaney(params.fmax), params.n_mels + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - bin_hz[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    bank = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return bank.T.astype(np.float32)


def mel_filterbank(params: FeatureParams) -> np.ndarray:
    """Triangular filters, shape (n_fft // 2 + 1, n_mels): HTK scale, each normalized to unit area, or Slaney's."""
    if params.mel_scale == "slaney":
        return slaney_filterbank(params)
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
        if p.kind == "melpower":
            frames = waveforms.unfold(-1, p.win_length, p.hop_length)
            return torch.cat([mel, frames.square().mean(dim=-1, keepdim=True)], dim=-1)
        feats = torch.log(torch.clamp(mel, min=p.log_floor))
        if self._dct is not None:
            feats = torch.matmul(feats, self._dct)
        return feats

    def padded(self, waveforms: list[np.ndarray]) -> torch.Tensor:
        """Waveforms of different lengths as one batch, zero-padded at the end: the frames of each are its own
        (framing is causal), then padding; (B, frames of the longest, n_features)."""
        batch = np.zeros((len(waveforms), max(len(w) for w in waveforms)), dtype=np.float32)
        for row, waveform in enumerate(waveforms):
            batch[row, : len(waveform)] = waveform
        with torch.no_grad():
            return self.batch(torch.from_numpy(batch))

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        """One mono float32 waveform -> (frames, n_features) float32."""
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None, :]
            return self.batch(x)[0].numpy()


def complete_frames(params: FeatureParams, buffer: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Streaming: (the samples whose frames are complete, or None; the samples to keep for the next chunk). The
    extractor's frames of each returned segment, joined, equal the offline frames of the whole audio."""
    n = params.n_frames(len(buffer))
    if n == 0:
        return None, buffer
    return buffer[: (n - 1) * params.hop_length + params.win_length], buffer[n * params.hop_length :]


def whole_steps(pending: torch.Tensor, frames: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Streaming: (B, n, F) frames after the (B, m, F) frames still `pending` -> (the frames of whole steps of
    `k` frames, the frames left pending)."""
    every = torch.cat([pending, frames], dim=1)
    usable = (every.shape[1] // k) * k
    return every[:, :usable], every[:, usable:]


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    """PCM int16 -> float32 in [-1, 1)."""
    return samples.astype(np.float32) / 32768.0
