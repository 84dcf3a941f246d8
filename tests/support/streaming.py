"""Helpers for the streaming tests: espeak-ng speech at 16 kHz, WAV writing, and small model files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from spkidd import SAMPLE_RATE
from spkidd.features import FeatureParams
from spkidd.model import ModelConfig, SpeakerModel
from spkidd.modelfile import ModelBundle, save_model

VOICES: dict[str, list[str]] = {
    "alice": ["-v", "en-us+f2", "-p", "70", "-s", "160"],
    "bob": ["-v", "en-us+m3", "-p", "35", "-s", "140"],
    "carol": ["-v", "en-gb+f4", "-p", "60", "-s", "175"],
}


def espeak(voice: str, text: str) -> np.ndarray:
    """espeak-ng speech of one of VOICES, resampled by sox to 16 kHz mono float32."""
    synth = subprocess.run(["espeak-ng", *VOICES[voice], "--stdout", text], check=True, capture_output=True, timeout=60)
    raw = subprocess.run(
        [
            "sox",
            "-t",
            "wav",
            "-",
            "-r",
            str(SAMPLE_RATE),
            "-c",
            "1",
            "-b",
            "16",
            "-e",
            "signed",
            "-t",
            "raw",
            "-",
            "gain",
            "-n",
            "-3",
        ],
        input=synth.stdout,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return np.frombuffer(raw.stdout, dtype=np.int16).astype(np.float32) / 32768.0


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def write_wav(path: Path, audio: np.ndarray) -> Path:
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return path


def random_bundle(labels: list[str], *, seed: int = 0, hidden: int = 32) -> ModelBundle:
    """An untrained but valid model: enough to prove the streaming path equals the offline one."""
    torch.manual_seed(seed)
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
