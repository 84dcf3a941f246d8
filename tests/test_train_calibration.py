"""The unknown threshold is calibrated on speed-changed copies of the training voices, as stand-in strangers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd.modelfile import load_model
from tests.support.daemon import SPKIDD
from train.fit import Split, pseudo_strangers


def _voice(f0: float, formant: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A buzzy vowel-like signal: harmonics of a wobbling f0, weighted around one formant; cheap stand-in voices."""
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    harmonics = np.arange(1, 30)
    weights = np.exp(-(((harmonics * f0 - formant) / 400.0) ** 2))
    audio = sum(w * np.sin(h * phase) for h, w in zip(harmonics, weights, strict=True))
    audio = audio + 0.01 * rng.standard_normal(len(t))
    return (0.3 * audio / np.max(np.abs(audio))).astype(np.float32)


def _split(n_speakers: int) -> Split:
    rng = np.random.default_rng(0)
    split = Split([], [], [], [])
    for label in range(n_speakers):
        for _ in range(3):
            split.train_audio.append(_voice(90 + 12 * label, 500 + 60 * label, 2.0, rng))
            split.train_labels.append(label)
        split.val_audio.append(_voice(90 + 12 * label, 500 + 60 * label, 1.5, rng))
        split.val_labels.append(label)
    return split


def test_calibration_impostors_are_every_voice_at_another_speed() -> None:
    split = _split(4)
    audio, labels = pseudo_strangers(split)
    every = split.train_audio + split.val_audio
    assert len(audio) == len(every) and labels == split.train_labels + split.val_labels
    speeds = [0.85, 1.18]
    assert [len(a) for a in audio] == pytest.approx([len(a) / speeds[i % 2] for i, a in enumerate(every)], abs=2)


@pytest.mark.slow
def test_the_threshold_is_calibrated_on_speed_changed_voices_and_says_so(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for label in range(6):
        folder = tmp_path / "data" / f"v{label:02d}"
        folder.mkdir(parents=True)
        for i in range(4):
            sf.write(folder / f"{i}.wav", _voice(90 + 25 * label, 500 + 150 * label, 2.0, rng), 16000)
    out = tmp_path / "m.safetensors"
    small = ["--encoder", "none", "--hidden", "32", "--layers", "1", "--epochs", "20", "--threads", "1"]
    proc = subprocess.run(
        [SPKIDD, "train", str(tmp_path / "data"), "--out", str(out), *small, "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    bundle = load_model(out)
    calibration = bundle.training["calibration"]
    assert calibration["impostors"] == "every voice at 0.85x or 1.18x speed", "the scratch network's impostors"
    assert calibration["val_far"] <= 0.05, "at most the target share of the speed-changed voices get a name"
    assert 0.0 < bundle.decision["min_score"] < 1.0
