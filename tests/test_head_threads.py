"""The heads' epochs run on one torch thread, and everything around them on as many as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spkidd import SAMPLE_RATE
from train.fit import Split, TrainSettings
from train.fit_head import HeadTrainer, one_torch_thread


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


def test_the_trainer_runs_its_epochs_on_one_thread_and_gives_the_others_back(tmp_path: Path) -> None:
    """What the one-thread epochs are for: a real HeadTrainer run, asked for two threads, reports one thread at
    every epoch (its callback runs inside the epoch loop) and two again once the model is built."""
    rng = np.random.default_rng(0)
    tones = [np.sin(2 * np.pi * f * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE) for f in (180.0, 260.0, 390.0)]
    clips = [0.3 * tone + 0.02 * rng.standard_normal(len(tone)) for tone in tones for _ in range(4)]
    labels = [i for i in range(3) for _ in range(4)]
    split = Split(clips[::2] + clips[1::4], labels[::2] + labels[1::4], clips[3::4], labels[3::4])
    settings = TrainSettings(epochs=2, patience=2, pools=1, threads=2, seed=1)
    trainer = HeadTrainer(settings, ["a", "b", "c"], split, tmp_path / "m.safetensors", {})
    before = torch.get_num_threads()
    seen: list[int] = []
    try:
        result = trainer.run(on_epoch=lambda _record: seen.append(torch.get_num_threads()))
        assert seen == [1, 1]
        assert torch.get_num_threads() == 2
        assert result.bundle.training["epochs_run"] == 2
    finally:
        torch.set_num_threads(before)
