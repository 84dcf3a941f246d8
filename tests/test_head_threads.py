"""The heads' epochs run on one torch thread, and everything around them on as many as before."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.support.training import tone_split
from train.fit import TrainSettings
from train.fit_head import HeadTrainer
from train.trainer_base import EpochRecord, TrainResult, one_torch_thread


def test_one_thread_inside_and_the_count_restored_even_after_ctrl_c() -> None:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with one_torch_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(KeyboardInterrupt), one_torch_thread():
            raise KeyboardInterrupt
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def _train(tmp_path: Path, threads: int, on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    settings = TrainSettings(epochs=3, patience=3, pools=1, threads=threads, seed=1)
    trainer = HeadTrainer(settings, ["a", "b", "c"], tone_split(), tmp_path / f"m{threads}.safetensors", {})
    assert trainer.head_processes(trainer.resolved(), 2) == min(threads, len(os.sched_getaffinity(0)))
    return trainer.run(on_epoch=on_epoch)


def test_the_trainer_runs_its_epochs_on_one_thread_and_gives_the_others_back(tmp_path: Path) -> None:
    """What the one-thread epochs are for: a real HeadTrainer run, asked for two threads, reports one thread at
    every epoch (its callback runs inside the epoch loop) and two again once the model is built."""
    before = torch.get_num_threads()
    seen: list[int] = []
    try:
        result = _train(tmp_path, 2, lambda _record: seen.append(torch.get_num_threads()))
        assert seen == [1, 1, 1]
        assert torch.get_num_threads() == 2
        assert result.bundle.training["epochs_run"] == 3
    finally:
        torch.set_num_threads(before)


def test_two_heads_in_two_processes_train_the_same_model_as_in_one(tmp_path: Path) -> None:
    """With two cores each head trains in a process of its own (train.head_parallel): the model, every epoch's
    figures and the checkpoint's optimizer state are those of the run that trains both heads in one process."""
    assert len(os.sched_getaffinity(0)) >= 2, "this test needs two cores, as the machines it is written for have"
    before = torch.get_num_threads()
    try:
        one, two = _train(tmp_path, 1), _train(tmp_path, 2)
    finally:
        torch.set_num_threads(before)
    assert [(r.train_acc, r.val_acc) for r in one.history] == [(r.train_acc, r.val_acc) for r in two.history]
    assert [r.loss for r in one.history] == pytest.approx([r.loss for r in two.history], rel=1e-6)
    tensors_one, tensors_two = one.bundle.model.state_dict(), two.bundle.model.state_dict()
    assert tensors_one.keys() == tensors_two.keys()
    for name, tensor in tensors_one.items():
        assert torch.equal(tensor, tensors_two[name]), name
    assert one.bundle.decision == two.bundle.decision
    optimizers = [torch.load(tmp_path / f"m{n}.safetensors.ckpt", weights_only=True)["optimizer"] for n in (1, 2)]
    assert optimizers[0]["state"].keys() == optimizers[1]["state"].keys() and optimizers[0]["state"]
    for key, state in optimizers[0]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, optimizers[1]["state"][key][name]), (key, name)
