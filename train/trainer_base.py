"""What both trainers share: their inputs, the epoch loop (train, validate, keep the best, checkpoint, stop early),
checkpoints and resume, Ctrl-C between epochs, and the model file's training record."""

from __future__ import annotations

import json
import logging
import pickle
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from spkidd import SAMPLE_RATE, __version__
from spkidd.atomic_file import replaced_atomically
from spkidd.features import FeatureExtractor, FeatureParams
from spkidd.modelfile import ModelBundle, SpeakerNet, check_writable, save_model
from spkidd.plots import pyplot
from train.distributed import Ranks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from train.fit import Split, TrainSettings

log = logging.getLogger(__name__)


HELD_OUT = "held-out audio"
TRAINING_AUDIO = "training audio"


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_acc: float
    val_acc: float
    seconds: float
    lr: float


@dataclass
class TrainResult:
    bundle: ModelBundle
    history: list[EpochRecord] = field(default_factory=list)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Epochs run on one thread, the encoding, the references and the calibration on all. An epoch's batch is
    hundreds of small operations, and a second thread waits for work between them: with the waiting threads
    sleeping (OMP_WAIT_POLICY=PASSIVE, spkidd/__init__.py) a batch of the two ge2e heads took 38 ms on one thread
    against 62 ms on two on an idle 2-core host (spinning threads: 28 ms idle, but 237-291 ms beside another such
    job), and the network trained from scratch ran P1's epochs in 1.9 s against 2.8 s and P2's in 3.1-3.4 s
    against 3.9-4.6 s, the same numbers. A second core is used by a second head (train.head_parallel)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM during training: the last finished epoch's checkpoint is kept, no model is written."""


@dataclass
class Best:
    """The best validation so far: accuracy, epoch and the model's tensors then (none before the first epoch of
    the scratch network, which has no model worth keeping yet)."""

    acc: float
    epoch: int
    state: dict[str, torch.Tensor] | None


@dataclass
class RunState:
    """Where a run stands: the finished epochs, the best of them, the next epoch, and the seconds spent before a
    resume (the recorded training time counts them)."""

    history: list[EpochRecord]
    best: Best
    first_epoch: int = 1
    wall_before: float = 0.0

    def wall_s(self, started: float) -> float:
        return self.wall_before + time.monotonic() - started


@dataclass
class Fit:
    """What the epoch loop drives: the model, its optimizer and learning-rate schedule (checkpointed every epoch),
    and the trainer's own steps."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    train_epoch: Callable[[int, float], tuple[float, float]]
    """(epoch, margin) -> (loss, training accuracy)."""
    validate: Callable[[float], float]
    """The training accuracy -> the validation accuracy."""
    may_stop: Callable[[], bool]
    """Whether early stopping may end the run now."""


@dataclass
class Calibrated:
    """The decision thresholds calibrated on held-out speech, how they were found, and the held-out accuracy of
    centroid scoring."""

    decision: dict[str, float]
    record: dict[str, Any]
    centroid_acc: float | None
    """None without held-out audio."""


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's tensors, which later updates leave as they are."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def class_weights(counts: np.ndarray, balance: str) -> torch.Tensor | None:
    """Cross-entropy weights inverse to each speaker's share of `counts`, when `balance` asks for weights and the
    speakers are uneven enough (the largest more than 1.2 times the smallest) to need them."""
    if balance != "weights" or counts.max() <= 1.2 * max(counts.min(), 1):
        return None
    w = 1.0 / np.maximum(counts, 1)
    return torch.tensor(w / w.mean(), dtype=torch.float32)


class TrainerBase(ABC):
    """The shared half of train.fit.Trainer and train.fit_head.HeadTrainer; `spkidd train` (train.run) drives
    either through resolved(), plan_text(), progress_label, run() and finish()."""

    progress_label: ClassVar[str]
    checkpoint_encoder: ClassVar[str | None] = None
    """Written into checkpoints and required of the one resumed, so one trainer refuses the other's."""

    def __init__(
        self,
        settings: TrainSettings,
        labels: list[str],
        split: Split,
        out: Path,
        data_summary: dict[str, Any],
        noise_clips: list[np.ndarray] | None = None,
        progress: Callable[[str, int], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.labels = labels
        self.split = split
        self.out = out
        self.data_summary = data_summary
        self.noise_clips = noise_clips
        self.progress = progress
        self.ranks = Ranks.current()
        self.params = self._feature_params(settings)
        self.extractor = FeatureExtractor(self.params)
        self.rng = np.random.default_rng(settings.seed)
        torch.manual_seed(settings.seed)
        self.checkpoint_path = checkpoint_of(out)
        self._read_inputs()

    def _read_inputs(self) -> None:
        """Reads what the run needs besides the data (nothing here), before the plan is printed, so that a missing
        file is reported at once."""
        return

    @abstractmethod
    def _feature_params(self, settings: TrainSettings) -> FeatureParams:
        """What the model's input features are."""

    @abstractmethod
    def resolved(self) -> TrainSettings:
        """The settings with every `None` chosen."""

    @abstractmethod
    def plan_text(self, plan: TrainSettings) -> str:
        """One line on what the run will do, for the person who started it."""

    @abstractmethod
    def run(self, resume: bool = False, on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
        """Trains (from the checkpoint when `resume`) and returns the model file's contents."""

    # ----- epochs -----
    def _epochs(
        self,
        fit: Fit,
        run: RunState,
        settings: TrainSettings,
        started: float,
        on_epoch: Callable[[EpochRecord], None] | None,
    ) -> None:
        """Epochs from `run.first_epoch`, each checkpointed, until the planned number or `patience` epochs
        without a better validation; leaves the model at its best epoch."""
        assert settings.epochs is not None and settings.patience is not None
        with _interrupts_as_exception(), one_torch_thread():
            for epoch in range(run.first_epoch, settings.epochs + 1):
                record = self._epoch(fit, epoch, settings)
                run.history.append(record)
                if record.val_acc > run.best.acc:
                    run.best = Best(record.val_acc, epoch, model_state(fit.model))
                self._save_checkpoint(self._checkpoint(fit, run, epoch, started))
                if on_epoch:
                    on_epoch(record)
                best = run.best
                if fit.may_stop() and epoch - best.epoch >= settings.patience:
                    log.info("early stop at epoch %d (best %.4f at epoch %d)", epoch, best.acc, best.epoch)
                    break
        assert run.best.state is not None
        fit.model.load_state_dict(run.best.state)
        fit.model.eval()

    @staticmethod
    def _epoch(fit: Fit, epoch: int, settings: TrainSettings) -> EpochRecord:
        """One epoch trained and validated; the margin grows to its full size over the first five epochs."""
        t0 = time.monotonic()
        margin = settings.margin * min(1.0, epoch / 5.0)
        loss, train_acc = fit.train_epoch(epoch, margin)
        val_acc = fit.validate(train_acc)
        lr = float(fit.scheduler.get_last_lr()[0]) if fit.scheduler is not None else settings.learning_rate
        return EpochRecord(epoch, loss, train_acc, val_acc, time.monotonic() - t0, lr)

    # ----- checkpoints -----
    def _checkpoint(self, fit: Fit, run: RunState, epoch: int, started: float) -> dict[str, Any]:
        state: dict[str, Any] = {"model": fit.model.state_dict(), "optimizer": fit.optimizer.state_dict()}
        if fit.scheduler is not None:
            state["scheduler"] = fit.scheduler.state_dict()
        return state | {
            "epoch": epoch,
            "best_acc": run.best.acc,
            "best_epoch": run.best.epoch,
            "best_model": run.best.state,
            "labels": self.labels,
            "encoder": self.checkpoint_encoder,
            "history": json.dumps([asdict(h) for h in run.history]),
            "wall_s": run.wall_s(started),
            "random": self.ranks.gather(self._random_state(fit.model)),
        }

    def _random_state(self, model: nn.Module) -> dict[str, Any]:
        """Where the run's random numbers stand (the batches' and augmentation's generator, torch's for dropout),
        so that a resumed run draws what the uninterrupted one would have."""
        return {"numpy": self.rng.bit_generator.state, "torch": torch.get_rng_state()}

    def _restore_random(self, model: nn.Module, state: dict[str, Any]) -> None:
        """The generators as `_random_state` recorded them; in place, since the augmenter shares `self.rng`."""
        self.rng.bit_generator.state = state["numpy"]
        torch.set_rng_state(state["torch"])

    def _own_random_state(self, saved: list[dict[str, Any]] | dict[str, Any]) -> dict[str, Any]:
        """This rank's generators: under torchrun each rank draws its own share of batches, so a checkpoint holds
        one set per rank (a checkpoint written before that holds one set, not a list, and still resumes)."""
        if isinstance(saved, dict):
            return saved
        if len(saved) != self.ranks.world:
            log.warning(
                "the checkpoint was written by %d training processes and this run has %d: it goes on, but not with "
                "the random numbers an uninterrupted run would have drawn",
                len(saved),
                self.ranks.world,
            )
        return saved[self.ranks.rank % len(saved)]

    def _save_checkpoint(self, state: dict[str, Any]) -> None:
        if not self.ranks.writes:
            return
        with replaced_atomically(self.checkpoint_path) as temporary:
            torch.save(state, temporary)

    def _load_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint, None without one; one of another run (other speakers, the other encoder) or a damaged
        file is refused with what is wrong and how to start over."""
        if not self.checkpoint_path.is_file():
            return None
        start_over = f"train without --resume to start over (it replaces {self.checkpoint_path.name})"
        try:
            state: dict[str, Any] = torch.load(self.checkpoint_path, weights_only=True)
        except (RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            raise ValueError(f"{self.checkpoint_path}: not a readable checkpoint ({exc}); {start_over}") from None
        theirs, ours = state.get("encoder") or "none", self.checkpoint_encoder or "none"
        if theirs != ours:
            raise ValueError(
                f"{self.checkpoint_path}: the interrupted run trained with --encoder {theirs}, this one with "
                f"--encoder {ours}; cannot resume: give --encoder {theirs}, or {start_over}"
            )
        if state.get("labels") != self.labels:
            raise ValueError(
                f"{self.checkpoint_path}: the interrupted run trained on other speakers "
                f"({_speaker_difference(state.get('labels') or [], self.labels)}); cannot resume: {start_over}"
            )
        return state

    def check_resumable(self) -> None:
        """Before the audio is encoded (minutes on a large set): a checkpoint `--resume` cannot go on from is
        refused now, not when the epochs would start."""
        self._load_checkpoint()

    def _resume(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ) -> RunState | None:
        """The model, optimizer, schedule and random generators as the checkpoint left them, and where the run
        stood; None without a checkpoint. Called once the run is set up as the first run was, so that it goes on
        exactly as an uninterrupted run would (in one process, the heads' processes, or torchrun's ranks)."""
        state = self._load_checkpoint()
        if state is None:
            log.warning(
                "--resume: no checkpoint at %s (no epoch had finished); training from the start", self.checkpoint_path
            )
            return None
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise ValueError(f"{self.checkpoint_path}: checkpoint was made with other settings; cannot resume") from exc
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if "random" in state:
            self._restore_random(model, self._own_random_state(state["random"]))
        history = [EpochRecord(**h) for h in json.loads(state["history"])]
        best = Best(state["best_acc"], state["best_epoch"], state["best_model"])
        log.info("resuming after epoch %d (best validation accuracy %.4f)", state["epoch"], best.acc)
        return RunState(history, best, state["epoch"] + 1, float(state.get("wall_s", 0.0)))

    # ----- the model file -----
    def _enrollment(self, audio: list[np.ndarray], labels: list[int]) -> dict[str, dict[str, Any]]:
        """Every speaker's seconds of `audio`, recorded as its enrollment from training."""
        seconds = np.zeros(len(self.labels))
        for clip, label in zip(audio, labels, strict=True):
            seconds[label] += len(clip) / SAMPLE_RATE
        return {
            label: {"source": "training", "seconds": round(float(seconds[i]), 2)} for i, label in enumerate(self.labels)
        }

    def _bundle(
        self,
        model: SpeakerNet,
        settings: TrainSettings,
        run: RunState,
        wall_s: float,
        calibrated: Calibrated,
        about: dict[str, Any],
        enrollment: dict[str, dict[str, Any]],
    ) -> ModelBundle:
        """The model file's contents: the model, its decision thresholds and the training record (`about` names
        what the model was built on, for the encoder model its encoder)."""
        return ModelBundle(
            model=model,
            labels=self.labels,
            features=self.params,
            name=self.out.stem,
            decision=calibrated.decision,
            training={
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "spkidd_version": __version__,
                **about,
                "settings": settings.to_dict(),
                "data": self.data_summary,
                "best_epoch": run.best.epoch,
                "best_val_acc": run.best.acc,
                "validated_on": self.validated_on(),
                "val_acc_centroids": calibrated.centroid_acc,
                "epochs_run": len(run.history),
                "wall_s": round(wall_s, 1),
                "calibration": calibrated.record,
                "history": [asdict(h) for h in run.history],
            },
            enrollment=enrollment,
        )

    def validated_on(self) -> str:
        """What the validation accuracy was measured on: without held-out audio the epochs are validated on the
        training audio, whose accuracy says little about new speech, and the summary must not pass it off as
        validation."""
        return HELD_OUT if self.split.val_audio else TRAINING_AUDIO

    def finish(self, result: TrainResult) -> None:
        """Writes the model (atomically) and the training curve; removes the checkpoint."""
        if not self.ranks.writes:
            return
        check_writable(self.out)
        save_model(result.bundle, self.out)
        kept = (result.bundle.training["best_epoch"], result.bundle.training["best_val_acc"])
        plot_history(result.history, kept, self.out.with_name(self.out.stem + ".training.png"))
        self.checkpoint_path.unlink(missing_ok=True)


def _speaker_difference(theirs: list[str], ours: list[str]) -> str:
    """What the speakers of an interrupted run and of this one differ in, in a few names."""
    parts = []
    if missing := sorted(set(theirs) - set(ours)):
        parts.append(f"not in this run: {', '.join(missing[:5])}")
    if new := sorted(set(ours) - set(theirs)):
        parts.append(f"new in this run: {', '.join(new[:5])}")
    return "; ".join(parts) or "in another order"


def checkpoint_of(out: Path) -> Path:
    """Where training keeps its last finished epoch until the model file is written."""
    return out.with_name(out.name + ".ckpt")


class _interrupts_as_exception:
    """Turns Ctrl-C and SIGTERM into TrainingInterrupted between epochs' writes, so checkpoints stay whole."""

    def __enter__(self) -> None:
        self._old = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._raise)

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: Any) -> None:
        signal.signal(signal.SIGTERM, self._old)
        if kind is KeyboardInterrupt:
            raise TrainingInterrupted() from value

    @staticmethod
    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt


def plot_history(history: list[EpochRecord], kept: tuple[int, float], path: Path) -> None:
    plt = pyplot()
    fig = history_figure(history, kept)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def history_figure(history: list[EpochRecord], kept: tuple[int, float]) -> Figure:
    """Loss and accuracy per epoch (whole epochs on the axes), and the epoch whose model was kept (`kept`: epoch,
    accuracy), which the summary names: without it a curve that ended low hid that an earlier epoch, or the heads
    before any (epoch 0), won."""
    from matplotlib.ticker import MaxNLocator

    epochs = [h.epoch for h in history]
    fig, (ax_loss, ax_acc) = pyplot().subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h.loss for h in history], color="tab:red")
    ax_loss.set(title="training loss", xlabel="epoch")
    ax_acc.plot(epochs, [h.train_acc for h in history], label="train")
    ax_acc.plot(epochs, [h.val_acc for h in history], label="validation")
    epoch, accuracy = kept
    when = "before training" if epoch == 0 else f"epoch {epoch}"
    ax_acc.plot([epoch], [accuracy], "k*", markersize=12, label=f"model kept: {when}, {accuracy:.3f}")
    ax_acc.set(title="accuracy", xlabel="epoch", ylim=(0, 1.02))
    ax_acc.legend(loc="best")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
