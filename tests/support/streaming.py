"""Helpers for the streaming tests: silence, WAV writing, trimming, and small model files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from spkidd import SAMPLE_RATE
from spkidd.encoder import GE2E_FEATURES
from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from spkidd.features import FeatureParams
from spkidd.model import ModelConfig, SpeakerModel
from spkidd.modelfile import ModelBundle, save_model


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return path


def random_bundle(labels: list[str], *, seed: int = 0, hidden: int = 32, encoder: bool = False) -> ModelBundle:
    """An untrained but valid model: enough to prove the streaming path equals the offline one. With `encoder`,
    the pretrained-encoder model (random weights everywhere, the household GRU's share switched on)."""
    torch.manual_seed(seed)
    if encoder:
        ge2e = EncoderSpeakerModel(EncoderModelConfig(n_speakers=len(labels), head_hidden=hidden, dropout=0.0))
        with torch.no_grad():
            ge2e.from_gru.weight.normal_(0, 0.2)
        return ModelBundle(
            model=ge2e.eval(), labels=labels, features=GE2E_FEATURES, name="random", training={"created": "test"}
        )
    params = FeatureParams()
    config = ModelConfig(
        n_features=params.n_features, n_speakers=len(labels), hidden=hidden, embedding_dim=16, dropout=0.0
    )
    model = SpeakerModel(config).eval()
    return ModelBundle(model=model, labels=labels, features=params, name="random", training={"created": "test"})


def save_random_model(path: Path, labels: list[str], *, seed: int = 0) -> Path:
    save_model(random_bundle(labels, seed=seed), path)
    return path


def trim(audio: np.ndarray, level: float = 0.01) -> np.ndarray:
    """Cuts espeak's leading and trailing near-silence so test pauses are exactly the ones a test inserts."""
    loud = np.flatnonzero(np.abs(audio) > level)
    return audio[loud[0] : loud[-1] + 1]
