"""What training keeps of the audio while the head trains: the encoded pools' steps and little else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spkidd import SAMPLE_RATE
from spkidd.encoder import HIDDEN
from tests.support.training import tone_split
from train import fit_head
from train.fit import TrainSettings
from train.fit_head import EncodedPool, HeadTrainer, join_pieces


def _pools(tmp_path: Path, pools: int = 2) -> tuple[list[EncodedPool], EncodedPool, float]:
    """A real trainer's training pools, its validation pool and the seconds of training audio they were made from."""
    split = tone_split()
    trainer = HeadTrainer(TrainSettings(pools=pools, seed=3), ["a", "b", "c"], split, tmp_path / "m.safetensors", {})
    settings = trainer.resolved()
    training, validation = trainer._pools(trainer._new_model(settings), settings)
    return training, validation, sum(len(a) for a in split.train_audio) / SAMPLE_RATE


def test_planned_sequences_are_views_of_the_training_audio_until_they_are_encoded() -> None:
    """Every pool's sequences are drawn before the first is encoded: as joined copies with a speaker per sample
    they took 70 MB per minute of training audio."""
    split = tone_split()
    plan = join_pieces(split.train_audio, split.train_labels, np.random.default_rng(0), 30.0)
    assert sum(joined.samples for joined in plan) >= 30 * SAMPLE_RATE
    for joined in plan:
        assert all(any(np.shares_memory(part, item) for item in split.train_audio) for part in joined.parts)
        assert all(a != b for a, b in zip(joined.speakers, joined.speakers[1:], strict=False))
        audio, owners = joined.audio(), joined.owners()
        assert len(audio) == len(owners) == joined.samples
        assert np.array_equal(audio, np.concatenate(joined.parts))
        starts = np.cumsum([0] + [len(part) for part in joined.parts[:-1]])
        assert owners[starts].tolist() == joined.speakers


def _storage_bytes(pools: list[EncodedPool]) -> int:
    """Bytes of the distinct storages behind the pools' tensors: what they keep alive, views included."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for p in pools for t in p.hidden}
    storages |= {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for p in pools for t in p.targets}
    return sum(storages.values())


def test_the_pools_keep_their_steps_and_nothing_else(tmp_path: Path) -> None:
    """A step is 50 ms: 256 float32 encoder outputs and its target, 20 KB per second of audio in a pool (its
    sequences are the training audio's length and at most one sequence more). Views of the encoder's batch outputs
    would keep its every frame and the batch's padding alive too (five times the steps, and more)."""
    training, validation, seconds = _pools(tmp_path)
    pools = [*training, validation]
    steps = sum(len(t) for p in pools for t in p.targets)
    for pool in pools:
        assert [h.shape for h in pool.hidden] == [(len(t), HIDDEN) for t in pool.targets]
    assert _storage_bytes(pools) <= steps * (HIDDEN * 4 + 8)
    pool_s = seconds + 4 * max(fit_head.PIECE_S)
    assert _storage_bytes(training) / len(training) / pool_s <= 20 * (HIDDEN * 4 + 8)


def test_a_sequence_is_encoded_alike_in_any_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sequences are encoded a few at a time (ENCODE_BATCH) to bound the memory it takes; in one batch they
    give the same pools to the bit."""
    few = _pools(tmp_path, pools=1)
    monkeypatch.setattr(fit_head, "ENCODE_BATCH", 1000)
    once = _pools(tmp_path, pools=1)
    for ours, theirs in zip([*few[0], few[1]], [*once[0], once[1]], strict=True):
        assert len(ours.hidden) == len(theirs.hidden)
        assert all(torch.equal(a, b) for a, b in zip(ours.hidden, theirs.hidden, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(ours.targets, theirs.targets, strict=True))
