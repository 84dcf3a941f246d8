"""A training stopped by Ctrl-C and resumed from its checkpoint ends with the model of a run never stopped: the
checkpoint holds the random generators (batches, augmentation, every head's dropout) besides the tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.support.training import tone_split
from train.fit import Trainer, TrainSettings
from train.fit_head import HeadTrainer
from train.trainer_base import EpochRecord, TrainerBase, TrainingInterrupted, TrainResult

LABELS = ["a", "b", "c"]


def _run(kind: type[TrainerBase], settings: TrainSettings, out: Path, stop_after: int = 0) -> TrainResult:
    """A run; with `stop_after`, resumed after a Ctrl-C at the end of that epoch."""

    def ctrl_c(record: EpochRecord) -> None:
        if record.epoch == stop_after:
            raise KeyboardInterrupt

    if stop_after:
        with pytest.raises(TrainingInterrupted):
            kind(settings, LABELS, tone_split(), out, {}).run(on_epoch=ctrl_c)
        assert out.with_name(out.name + ".ckpt").is_file()
    return kind(settings, LABELS, tone_split(), out, {}).run(resume=bool(stop_after))


def _assert_same_training(one: TrainResult, other: TrainResult) -> None:
    assert [(r.epoch, r.loss, r.train_acc, r.val_acc) for r in one.history] == [
        (r.epoch, r.loss, r.train_acc, r.val_acc) for r in other.history
    ]
    tensors, others = one.bundle.model.state_dict(), other.bundle.model.state_dict()
    assert tensors.keys() == others.keys()
    for name, tensor in tensors.items():
        assert torch.equal(tensor, others[name]), name
    assert one.bundle.decision == other.bundle.decision


def _assert_resuming_changes_nothing(kind: type[TrainerBase], settings: TrainSettings, directory: Path) -> None:
    before = torch.get_num_threads()
    try:
        whole = _run(kind, settings, directory / "whole.safetensors")
        resumed = _run(kind, settings, directory / "resumed.safetensors", stop_after=2)
    finally:
        torch.set_num_threads(before)
    _assert_same_training(whole, resumed)


@pytest.mark.parametrize("threads", [1, 2])
def test_resumed_heads_train_the_model_of_an_uninterrupted_run(tmp_path: Path, threads: int) -> None:
    """Both heads in one process, and (two threads) one each in two processes."""
    settings = TrainSettings(epochs=4, patience=4, pools=1, threads=threads, seed=1)
    _assert_resuming_changes_nothing(HeadTrainer, settings, tmp_path)


def test_the_resumed_scratch_network_trains_the_model_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """The network trained from scratch, augmented (its noise and masks come from the generators too)."""
    settings = TrainSettings(
        encoder="none", epochs=4, patience=4, batch_size=4, hidden=16, layers=1, embedding_dim=16, seed=1, threads=1
    )
    _assert_resuming_changes_nothing(Trainer, settings, tmp_path)
