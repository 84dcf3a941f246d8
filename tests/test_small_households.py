"""A one-speaker dataset is refused before anything is trained, and no impostor score is a filler."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from spkidd.encoder import GE2E_FEATURES
from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from spkidd.features import FeatureExtractor
from spkidd.synthetic import SENTENCES, synth_speech
from train.fit import window_scores

SPKIDD = [sys.executable, "-m", "spkidd"]
WIDE = {**os.environ, "COLUMNS": "200"}
"""The summary table on one line per row, so that its words can be looked for."""


def _noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    return (0.05 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)


def test_a_one_speaker_model_has_no_impostor_scores_rather_than_a_filler() -> None:
    """With nobody else to be mistaken for there is no best-impostor score; with two speakers it is a cosine."""
    torch.manual_seed(0)
    extractor = FeatureExtractor(GE2E_FEATURES)
    items = [_noise(1.5, np.random.default_rng(1))]
    for n_speakers, expected in ((1, 0), (2, 1)):
        model = EncoderSpeakerModel(EncoderModelConfig(n_speakers=n_speakers, window_frames=40, windows=2)).eval()
        scores = window_scores(model, extractor, items, [0], 3.0)
        assert scores.genuine.size == 1 and scores.impostor.size == expected
        assert np.all(np.abs(scores.impostor) <= 1.0 + 1e-6)


@pytest.mark.parametrize("encoder", ["ge2e", "none"])
def test_one_speaker_is_refused_before_anything_is_decoded(tmp_path: Path, encoder: str) -> None:
    synth_speech("alice", SENTENCES[0], tmp_path / "a.wav")
    (tmp_path / "m.csv").write_text("path,speaker\na.wav,alice\n")
    out = tmp_path / "m.safetensors"
    command = [*SPKIDD, "train", str(tmp_path / "m.csv"), "--out", str(out), "--encoder", encoder]
    proc = subprocess.run(command, capture_output=True, text=True, env=WIDE)
    assert proc.returncode == 2
    assert "only one speaker ('alice')" in proc.stderr and "at least two speakers" in proc.stderr
    assert "decoding" not in proc.stderr and "plan:" not in proc.stderr
    assert not out.exists()


def test_a_second_speaker_whose_files_are_all_unusable_leaves_one_and_is_refused(tmp_path: Path) -> None:
    synth_speech("alice", SENTENCES[0], tmp_path / "a.wav")
    (tmp_path / "b.wav").write_text("not audio")
    (tmp_path / "m.csv").write_text("path,speaker\na.wav,alice\nb.wav,bob\n")
    out = tmp_path / "m.safetensors"
    proc = subprocess.run(
        [*SPKIDD, "train", str(tmp_path / "m.csv"), "--out", str(out), "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
        env=WIDE,
    )
    assert proc.returncode == 2 and "only one speaker ('alice')" in proc.stderr
    assert "plan:" not in proc.stderr and not out.exists()
