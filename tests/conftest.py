"""Fixtures shared by the whole suite: synthetic speakers and a small model trained on them."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from spkidd.synthetic import SENTENCES, synth_corpus, synth_speech
from train.fit import TrainSettings
from train.run import TrainInputs, run_training

TRAINED_VOICES = ["alice", "bob", "carol"]
HOUSEHOLD_VOICES = ["alice", "bob", "carol", "gina", "hank", "ivan", "june", "kate", "liam", "mona", "nick"]
"""A wider synthetic household: enough voices for an embedding that can tell a stranger (dave, erin, frank)."""
TRAIN_SENTENCES = SENTENCES[:12]
HELD_OUT_SENTENCES = SENTENCES[12:]

# Small and quick, but the same code path as `spkidd train` (the pretrained encoder with a household GRU).
TEST_TRAIN_SETTINGS = TrainSettings(epochs=10, patience=10, pools=2, seed=0)
HOUSEHOLD_SETTINGS = TrainSettings(encoder="none", hidden=64, epochs=50, patience=50, seed=0, threads=1)
"""The household tests' voices are espeak-ng variants of one synthesizer: the pretrained encoder, trained on real
voices, hears them as nearly one voice (a stranger scored 0.99 as alice), so strangers, enrollment and the web page
are tested on the network trained from scratch, which learns exactly these voices apart; both share enrollment,
references, thresholds and the decider."""

__all__ = ["synth_speech"]


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Training clips of alice, bob and carol in a folder per speaker."""
    return synth_corpus(tmp_path_factory.mktemp("corpus"), TRAINED_VOICES, TRAIN_SENTENCES)


@pytest.fixture(scope="session")
def held_out_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sentences the model never heard, by the same three speakers."""
    return synth_corpus(tmp_path_factory.mktemp("held_out"), TRAINED_VOICES, HELD_OUT_SENTENCES)


@pytest.fixture(scope="session")
def trained_model(speech_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model file trained by the real training code on the synthetic corpus."""
    work = tmp_path_factory.mktemp("model")
    out = work / "voices.safetensors"
    inputs = TrainInputs(data=speech_corpus, out=out, cache_dir=work / "cache")
    code = run_training(inputs, TEST_TRAIN_SETTINGS, Console(quiet=True))
    assert code == 0 and out.is_file()
    return out


@pytest.fixture(scope="session")
def household_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on eleven synthetic voices (eight sentences each); dave, erin and frank are never heard."""
    work = tmp_path_factory.mktemp("household")
    corpus = synth_corpus(work / "voices", HOUSEHOLD_VOICES, SENTENCES[:8])
    out = work / "household.safetensors"
    code = run_training(
        TrainInputs(data=corpus, out=out, cache_dir=work / "cache"), HOUSEHOLD_SETTINGS, Console(quiet=True)
    )
    assert code == 0 and out.is_file()
    return out
