"""A training stopped by Ctrl-C and resumed from its checkpoint ends with the model of a run never stopped: the
checkpoint holds the random generators (batches, augmentation, every head's dropout) besides the tensors, one set
per process under torchrun."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from tests.support.mosquitto import free_port
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


def _outcome(result: TrainResult) -> dict[str, Any]:
    """What must not change: every epoch's figures, every tensor, the decision thresholds."""
    return {
        "history": [[r.epoch, r.loss, r.train_acc, r.val_acc] for r in result.history],
        "tensors": result.bundle.model.state_dict(),
        "decision": json.dumps(result.bundle.decision),
    }


def _assert_same_training(one: dict[str, Any], other: dict[str, Any]) -> None:
    assert one["history"] == other["history"]
    assert one["tensors"].keys() == other["tensors"].keys()
    for name, tensor in one["tensors"].items():
        assert torch.equal(tensor, other["tensors"][name]), name
    assert one["decision"] == other["decision"]


def _assert_resuming_changes_nothing(kind: type[TrainerBase], settings: TrainSettings, directory: Path) -> None:
    before = torch.get_num_threads()
    try:
        whole = _run(kind, settings, directory / "whole.safetensors")
        resumed = _run(kind, settings, directory / "resumed.safetensors", stop_after=2)
    finally:
        torch.set_num_threads(before)
    _assert_same_training(_outcome(whole), _outcome(resumed))


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


def _rank_of_two(rank: int, port: int, directory: Path, settings: TrainSettings, stop_after: int) -> None:
    """One of two ranks of a gloo group, as torchrun starts them; the first writes what the run ended with."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        name = "resumed" if stop_after else "whole"
        result = _run(HeadTrainer, settings, directory / f"{name}.safetensors", stop_after)
        if rank == 0:
            torch.save(_outcome(result), directory / f"{name}.pt")
    finally:
        dist.destroy_process_group()


def _two_ranks(directory: Path, settings: TrainSettings, stop_after: int = 0) -> dict[str, Any]:
    port = free_port()
    context = multiprocessing.get_context("spawn")
    ranks = [
        context.Process(target=_rank_of_two, args=(rank, port, directory, settings, stop_after)) for rank in (0, 1)
    ]
    for process in ranks:
        process.start()
    try:
        for process in ranks:
            process.join(timeout=240)
        assert [process.exitcode for process in ranks] == [0, 0]
    finally:
        for process in ranks:  # a rank that hangs (its peer died) must not outlive the test
            if process.is_alive():
                process.kill()
                process.join()
    outcome: dict[str, Any] = torch.load(directory / f"{'resumed' if stop_after else 'whole'}.pt", weights_only=True)
    return outcome


def test_resumed_heads_under_two_ranks_train_the_model_of_an_uninterrupted_run(tmp_path: Path) -> None:
    """Each rank draws its own share of batches, so each resumes with its own generators (with the first rank's
    for both, the model differs)."""
    settings = TrainSettings(epochs=4, patience=4, pools=1, threads=1, seed=1)
    _assert_same_training(_two_ranks(tmp_path, settings), _two_ranks(tmp_path, settings, stop_after=2))


SCRATCH = TrainSettings(
    encoder="none", epochs=2, patience=2, batch_size=4, hidden=16, layers=1, embedding_dim=16, seed=1, threads=1
)


def _interrupted_scratch_run(out: Path) -> None:
    def ctrl_c(record: EpochRecord) -> None:
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        Trainer(SCRATCH, LABELS, tone_split(), out, {}).run(on_epoch=ctrl_c)


def test_a_checkpoint_of_the_other_encoder_is_refused_before_the_audio_is_encoded(tmp_path: Path) -> None:
    """`--resume` after a run with `--encoder none` was refused only once the default encoder had encoded all the
    audio, and without saying what differed."""
    out = tmp_path / "m.safetensors"
    _interrupted_scratch_run(out)
    trainer = HeadTrainer(TrainSettings(epochs=2, pools=1, threads=1), LABELS, tone_split(), out, {})
    with pytest.raises(ValueError, match="trained with --encoder none, this one with --encoder ge2e") as refused:
        trainer.check_resumable()
    assert "give --encoder none, or train without --resume to start over" in str(refused.value)


def test_a_checkpoint_of_other_speakers_says_which(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    _interrupted_scratch_run(out)
    trainer = Trainer(SCRATCH, ["a", "b", "d"], tone_split(), out, {})
    with pytest.raises(ValueError, match=r"other speakers \(not in this run: c; new in this run: d\)"):
        trainer.check_resumable()


def test_a_damaged_checkpoint_is_refused_with_the_way_out(tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    _interrupted_scratch_run(out)
    checkpoint = out.with_name(out.name + ".ckpt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    trainer = Trainer(SCRATCH, LABELS, tone_split(), out, {})
    with pytest.raises(ValueError, match=r"not a readable checkpoint .*train without --resume to start over"):
        trainer.check_resumable()
