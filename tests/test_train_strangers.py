"""What the network is trained on: calibration strangers are kept out of it, speed-changed copies are extra speakers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd.modelfile import load_model
from train.fit import Split, Trainer, TrainSettings, pick_strangers

SPKIDD = [sys.executable, "-m", "spkidd"]


def _voice(f0: float, formant: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A buzzy vowel-like signal: harmonics of a wobbling f0, weighted around one formant. Cheap stand-ins for
    twenty-odd speakers, which espeak does not have."""
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


def test_strangers_only_with_enough_speakers() -> None:
    rng = np.random.default_rng(0)
    assert pick_strangers(19, 0.1, rng) == [], "a household needs every voice in the network"
    assert pick_strangers(200, 0.0, rng) == []
    picked = pick_strangers(24, 0.1, rng)
    assert len(picked) == 2 and picked == sorted(set(picked)) and all(0 <= i < 24 for i in picked)
    assert len(pick_strangers(200, 0.1, rng)) == 20


def test_strangers_are_kept_out_of_network_training_and_speed_copies_are_extra_classes(tmp_path: Path) -> None:
    split = _split(24)
    labels = [f"s{i:02d}" for i in range(24)]
    trainer = Trainer(TrainSettings(speed_classes=True), labels, split, tmp_path / "m.safetensors", {})
    strangers = trainer.strangers
    assert len(strangers) == 2
    assert trainer.network_speakers == 22 and trainer.n_classes == 66
    originals = len(split.train_audio) - 3 * len(strangers)
    assert len(trainer.fit_audio) == 3 * originals, "every trained item, plus a slower and a faster copy"
    assert sorted(set(trainer.fit_labels)) == list(range(66))
    assert len(trainer.fit_val[0]) == 22 and max(trainer.fit_val[1]) == 21
    first = len(split.train_audio[0])
    assert len(trainer.fit_audio[originals]) == pytest.approx(first / 0.9, abs=2)
    assert len(trainer.fit_audio[2 * originals]) == pytest.approx(first / 1.1, abs=2)
    with pytest.raises(ValueError, match="stranger_fraction"):
        TrainSettings(stranger_fraction=0.6)


@pytest.mark.slow
def test_a_trained_model_names_its_calibration_strangers_and_knows_them_as_enrolled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for label in range(22):
        folder = tmp_path / "data" / f"v{label:02d}"
        folder.mkdir(parents=True)
        for i in range(4):
            sf.write(folder / f"{i}.wav", _voice(90 + 12 * label, 500 + 60 * label, 2.0, rng), 16000)
    out = tmp_path / "m.safetensors"
    small = ["--hidden", "32", "--layers", "1", "--epochs", "3", "--threads", "1"]
    proc = subprocess.run(
        [*SPKIDD, "train", str(tmp_path / "data"), "--out", str(out), *small, "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "unknown threshold calibrated on 2 speakers the network never heard" in proc.stderr
    bundle = load_model(out)
    strangers = bundle.training["calibration"]["strangers"]
    assert len(strangers) == 2 and len(bundle.labels) == 22 and bundle.model.speakers.shape[0] == 22
    assert sorted(k for k, v in bundle.enrollment.items() if v["source"] == "calibration") == sorted(strangers)
    listing = subprocess.run([*SPKIDD, "speakers", str(out)], capture_output=True, text=True)
    assert listing.returncode == 0 and "calibration" in listing.stdout
