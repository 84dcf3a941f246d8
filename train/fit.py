"""Training: windows -> features -> SpeakerModel, additive-angular-margin cross-entropy at several prefix lengths
(so the streaming outputs are good early), Adam, class weights, augmentation, validation with early stopping,
checkpoints and resume (the epoch loop and checkpoints shared with the encoder model's trainer are in
train.trainer_base), DistributedDataParallel under torchrun."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from types import MappingProxyType
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spkidd import SAMPLE_RATE
from spkidd.features import FeatureExtractor, FeatureKind, FeatureParams
from spkidd.inference import consecutive_pieces, embed_pieces
from spkidd.model import CellKind, ModelConfig, SpeakerModel
from spkidd.modelfile import ModelBundle, SpeakerNet
from train.augment import STRANGER_SPEEDS, Augmenter, AugmentSettings, change_speed
from train.calibrate import calibrate_threshold, calibration_record
from train.references import ReferenceEmbeddings
from train.trainer_base import (
    Best,
    Calibrated,
    EpochRecord,
    Fit,
    RunState,
    TrainerBase,
    TrainResult,
    class_weights,
)

log = logging.getLogger(__name__)

UPDATES_PER_SQRT_SPEAKER = 200
"""Optimizer steps a default run aims at, per square root of the number of speakers (epochs are chosen from it):
about 500 for a household, 3200 for 250 speakers; both fit in minutes on 2 cores, and on LibriSpeech twice as
many steps gained 5 points of accuracy."""

EARLY_PREFIX_S = (0.3, 0.6, 1.0)
"""Prefix lengths (seconds) whose outputs are trained as well as the whole window's, for early decisions."""


CHOICES = MappingProxyType(
    {
        "optimizer": ("adam", "rmsprop"),
        "cell": ("gru", "lstm"),
        "balance": ("weights", "sampling", "none"),
        "features": ("logmel", "mfcc"),
        "encoder": ("ge2e", "none"),
    }
)


@dataclass
class TrainSettings:
    """Every knob of a run. `None` means: chosen from the data (and recorded in the model file)."""

    encoder: str = "ge2e"
    """"ge2e": the pretrained encoder with a household GRU on top; "none": the network trained from scratch."""
    window_s: float = 3.0
    epochs: int | None = None
    patience: int | None = None
    batch_size: int | None = None
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    dropout: float = 0.2
    cell: str = "gru"
    hidden: int = 192
    layers: int = 2
    embedding_dim: int = 128
    frame_stack: int = 3
    margin: float = 0.2
    scale: float = 30.0
    balance: str = "weights"
    augment: bool = True
    val_fraction: float = 0.1
    seed: int = 0
    features: str = "logmel"
    n_mels: int = 40
    threads: int | None = None
    windows: int = 2
    window_frames: int = 200
    step_frames: int = 5
    head_hidden: int = 128
    """ge2e: units of the household GRU; 64 measured worse on P2 and P2N (docs/benchmark-history.md, "Why the
    head's defaults")."""
    pools: int = 6
    """ge2e: passes over the training audio joined and augmented anew, each run through the encoder once; six were
    better than four after 2 s in every condition, most of all in noise (docs/benchmark-history.md)."""
    heads: int | None = None
    """ge2e: heads trained side by side and shipped as their average (train.ensemble); default
    train.fit_head.HEADS, 1 with tune_top. Two were better than one on every development figure, three no better
    than two (docs/benchmark-history.md)."""
    tune_top: bool = False
    """ge2e: train the encoder's top layer (256 x 256) with the head; the LSTM below stays frozen."""
    denoise: bool = False
    """ge2e: subtract the noise floor before the encoder (spkidd.denoise), in training and in the model file: better
    in noise, worse in quiet (measured in the README)."""
    target_far: float = 0.05
    """False-accept rate the unknown-speaker threshold is calibrated to. 1% rejected half of the genuine speech of a
    251-speaker LibriSpeech model (validation FRR 54%); 5% keeps a household's own voices answered."""

    def __post_init__(self) -> None:
        if not 0.0 < self.target_far < 1.0:
            raise ValueError(f"target_far must be between 0 and 1, not {self.target_far}")
        if self.heads is not None and not 1 <= self.heads <= 8:
            raise ValueError(f"heads must be 1-8, not {self.heads}")
        if self.tune_top and (self.heads or 1) > 1:
            raise ValueError("a tuned encoder top layer belongs to one head: use --heads 1 with --tune-top")
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Split:
    """Training and validation audio, as arrays with speaker indices. `cut_from` maps a validation item that is
    the tail of a clip to the training item it was cut from (train.references joins them again for the shipped
    references)."""

    train_audio: list[np.ndarray]
    train_labels: list[int]
    val_audio: list[np.ndarray]
    val_labels: list[int]
    cut_from: dict[int, int] = field(default_factory=dict)


def stratified_split(
    audio: list[np.ndarray],
    labels: list[int],
    fraction: float,
    rng: np.random.Generator,
    min_val_s: float = 1.0,
) -> Split:
    """Per speaker: hold out whole clips when it has enough of them, else the tail of its audio, so that the unknown
    threshold is calibrated on speech the references have not heard even in a household of a few short clips."""
    split = Split([], [], [], [])
    by_speaker: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_speaker.setdefault(label, []).append(i)
    for label, indices in sorted(by_speaker.items()):
        if len(indices) >= 4:
            _hold_out_clips(split, audio, label, indices, fraction, rng)
        else:
            _hold_out_tails(split, audio, label, indices, fraction, min_val_s)
    return split


def _hold_out_clips(
    split: Split, audio: list[np.ndarray], label: int, indices: list[int], fraction: float, rng: np.random.Generator
) -> None:
    """`fraction` of the speaker's clips (at least one), chosen at random, held out whole."""
    n_val = max(1, round(len(indices) * fraction))
    chosen = set(rng.choice(indices, size=n_val, replace=False).tolist())
    for i in indices:
        target = (split.val_audio, split.val_labels) if i in chosen else (split.train_audio, split.train_labels)
        target[0].append(audio[i])
        target[1].append(label)


def _hold_out_tails(
    split: Split, audio: list[np.ndarray], label: int, indices: list[int], fraction: float, min_val_s: float
) -> None:
    """The tail of every clip long enough to keep 70% of itself; when none is, the tail of the longest clip if the
    speaker keeps 70% of its audio and that clip keeps at least as much as it gives (three 3-s clips give a 1-s
    tail). Without the fallback a household of short clips held out nothing and its threshold was never
    calibrated."""
    min_val = int(min_val_s * SAMPLE_RATE)
    tails = {i: max(int(len(audio[i]) * fraction), min_val) for i in indices}
    tails = {i: held for i, held in tails.items() if len(audio[i]) - held >= 0.7 * len(audio[i])}
    if not tails:
        total = sum(len(audio[i]) for i in indices)
        longest = max(indices, key=lambda i: len(audio[i]))
        held = max(int(total * fraction), min_val)
        if total - held >= 0.7 * total and len(audio[longest]) - held >= held:
            tails = {longest: held}
    for i in indices:
        if i in tails:
            cut = len(audio[i]) - tails[i]
            split.cut_from[len(split.val_audio)] = len(split.train_audio)
            split.train_audio.append(audio[i][:cut])
            split.val_audio.append(audio[i][cut:])
            split.val_labels.append(label)
        else:
            split.train_audio.append(audio[i])
        split.train_labels.append(label)


def cut_windows(
    audio: list[np.ndarray], labels: list[int], window_s: float, min_s: float = 1.0
) -> tuple[list[np.ndarray], list[int]]:
    """Consecutive windows of `window_s` (a shorter clip stays whole; a short last piece is kept if >= min_s)."""
    size = int(window_s * SAMPLE_RATE)
    out_audio, out_labels = [], []
    for x, label in zip(audio, labels, strict=True):
        if len(x) <= size:
            out_audio.append(x)
            out_labels.append(label)
            continue
        for _, piece in consecutive_pieces(x, size, int(min_s * SAMPLE_RATE)):
            out_audio.append(piece)
            out_labels.append(label)
    return out_audio, out_labels


@dataclass
class WindowScores:
    """Held-out windows: how many the model named right, and each window's genuine and best-impostor score (what
    the unknown threshold is calibrated on)."""

    correct: int
    genuine: np.ndarray
    impostor: np.ndarray

    @property
    def accuracy(self) -> float | None:
        """None without windows: nothing was measured (a NaN would end up in the model file's JSON)."""
        return self.correct / self.genuine.size if self.genuine.size else None

    @staticmethod
    def joined(parts: list[WindowScores]) -> WindowScores:
        """Several shares' windows as one (the processes of a distributed run)."""
        return WindowScores(
            sum(p.correct for p in parts),
            np.concatenate([p.genuine for p in parts]),
            np.concatenate([p.impostor for p in parts]),
        )


def window_scores(
    model: SpeakerNet, extractor: FeatureExtractor, items: list[np.ndarray], item_labels: list[int], window_s: float
) -> WindowScores:
    """The windows of `items` scored as the shipped model scores them."""
    model.eval()
    audio, labels = cut_windows(items, item_labels, window_s)
    if not audio:
        return WindowScores(0, np.zeros(0), np.zeros(0))
    with torch.no_grad():
        output = model.output(torch.from_numpy(embed_pieces(model, extractor, audio)))
    target = torch.tensor(labels)
    correct = int((output.probs.argmax(1) == target).sum())
    scores = output.scores
    genuine = scores.gather(1, target[:, None])[:, 0].numpy()
    return WindowScores(correct, genuine, best_impostor(scores, target))


def best_impostor(scores: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per window, the highest score of a speaker other than its own; none when the model knows one speaker only
    (there is no other reference to be mistaken for, and a filler would be taken for a cosine)."""
    if scores.shape[1] < 2:
        return np.zeros(0)
    return scores.scatter(1, target[:, None], -torch.inf).max(1).values.numpy()


STRANGERS = f"every voice at {' or '.join(f'{f:g}x' for f in STRANGER_SPEEDS)} speed"


def pseudo_strangers(split: Split) -> tuple[list[np.ndarray], list[int]]:
    """Every speaker's audio at one of STRANGER_SPEEDS in turn, labelled as that speaker: scored against
    everybody else's reference, these are voices the network never heard, as real strangers are."""
    audio, labels = split.train_audio + split.val_audio, split.train_labels + split.val_labels
    changed = [change_speed(item, STRANGER_SPEEDS[i % len(STRANGER_SPEEDS)]) for i, item in enumerate(audio)]
    return changed, labels


class TrainingNet(nn.Module):
    """The model plus the margin head, as one module so DistributedDataParallel sees a single forward()."""

    def __init__(self, model: SpeakerModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: torch.Tensor, batch_index: torch.Tensor, step_index: torch.Tensor) -> torch.Tensor:
        embeddings = self.model.embed_sequence(frames)
        return self.model.cosine(embeddings[batch_index, step_index])


def margin_logits(cosine: torch.Tensor, targets: torch.Tensor, margin: float, scale: float) -> torch.Tensor:
    """Additive angular margin (ArcFace/AAM-softmax): the target's angle is widened by `margin` radians."""
    if margin <= 0:
        return scale * cosine
    cos = cosine.clamp(-1 + 1e-6, 1 - 1e-6)
    target_cos = cos.gather(1, targets[:, None])
    sin = torch.sqrt(1.0 - target_cos.square())
    widened = target_cos * math.cos(margin) - sin * math.sin(margin)
    # Past pi - margin the widened cosine would rise again; fall back to a linear penalty there.
    widened = torch.where(target_cos > math.cos(math.pi - margin), widened, target_cos - math.sin(margin) * margin)
    return scale * cos.scatter(1, targets[:, None], widened)


def augmentation_strength(epoch: int, epochs: int) -> float:
    """Full augmentation for the first 60% of the planned epochs, fading out by 85%: the model learns to ignore
    noise and rooms early, and still fits clean speech closely at the end (measured on LibriSpeech: constant
    augmentation cost 2-6 points of clean accuracy)."""
    progress = epoch / max(1, epochs)
    return float(np.clip((0.85 - progress) / 0.25, 0.0, 1.0))


def prefix_steps(n_steps: int, step_s: float) -> list[int]:
    """Output steps trained for one window: the end, half, a quarter, and a few early absolute prefixes."""
    chosen = {n_steps - 1, max(0, n_steps // 2 - 1), max(0, n_steps // 4 - 1)}
    chosen.update(round(s / step_s) - 1 for s in EARLY_PREFIX_S if round(s / step_s) - 1 < n_steps)
    return sorted(i for i in chosen if i >= 0)


@dataclass
class Learner:
    """The scratch network's training objects: the network an epoch runs (under DistributedDataParallel with
    several processes), the model inside it, how it is updated, and how its input is augmented and weighted."""

    net: nn.Module
    model: SpeakerModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    augmenter: Augmenter | None
    class_weights: torch.Tensor | None


class Trainer(TrainerBase):
    """The network trained from scratch (`spkidd train --encoder none`)."""

    progress_label = "training"

    def _feature_params(self, settings: TrainSettings) -> FeatureParams:
        return FeatureParams(kind=cast(FeatureKind, settings.features), n_mels=settings.n_mels)

    @property
    def step_s(self) -> float:
        """Seconds between the network's outputs."""
        return self.settings.frame_stack * self.params.hop_s

    def plan_text(self, plan: TrainSettings) -> str:
        return (
            f"plan: up to {plan.epochs} epochs (patience {plan.patience}), batch {plan.batch_size}, "
            f"{plan.window_s:g}-s windows, {plan.cell.upper()} {plan.layers}x{plan.hidden} from scratch, "
            f"augmentation {'on' if plan.augment else 'off'}, margin {plan.margin:g}"
        )

    # ----- planning from the data -----
    def _windows_per_epoch(self) -> int:
        size = self.settings.window_s * SAMPLE_RATE
        return sum(max(1, round(len(x) / size)) for x in self.split.train_audio)

    def resolved(self) -> TrainSettings:
        """Fills the `None` settings from the amount of data, so plain `spkidd train DATA` is what users run."""
        s = self.settings
        windows = self._windows_per_epoch()
        batch = s.batch_size or (32 if windows < 1000 else 64)
        per_epoch = max(1, windows // batch)
        updates = float(np.clip(UPDATES_PER_SQRT_SPEAKER * math.sqrt(len(self.labels)), 400, 4000))
        epochs = s.epochs or int(np.clip(math.ceil(updates / per_epoch), 20, 250))
        patience = s.patience or max(8, epochs // 5)
        return replace(s, batch_size=batch, epochs=epochs, patience=patience)

    # ----- data -----
    def _epoch_windows(self, batch_size: int) -> list[list[tuple[int, int, int]]]:
        """(item, start sample, length) windows for one epoch, grouped into length-sorted batches."""
        s, rng = self.settings, self.rng
        size = int(s.window_s * SAMPLE_RATE)
        windows: list[tuple[int, int, int]] = []
        for i, x in enumerate(self.split.train_audio):
            if len(x) <= size:
                windows.append((i, 0, len(x)))
                continue
            for _ in range(max(1, round(len(x) / size))):
                windows.append((i, int(rng.integers(0, len(x) - size + 1)), size))
        if s.balance == "sampling":
            counts = np.bincount(self.split.train_labels, minlength=len(self.labels)).astype(float)
            weight = np.array([1.0 / counts[self.split.train_labels[w[0]]] for w in windows])
            picks = rng.choice(len(windows), size=len(windows), p=weight / weight.sum())
            windows = [windows[int(p)] for p in picks]
        order = rng.permutation(len(windows))
        shuffled = [windows[int(i)] for i in order]
        pool = batch_size * 16
        batches: list[list[tuple[int, int, int]]] = []
        for start in range(0, len(shuffled), pool):
            group = sorted(shuffled[start : start + pool], key=lambda w: w[2])
            batches.extend(group[j : j + batch_size] for j in range(0, len(group), batch_size))
        batches = [b for b in batches if len(b) >= 2]
        batches = [batches[int(i)] for i in rng.permutation(len(batches))]
        return self.ranks.even_share(batches)

    def _features(self, audio: list[np.ndarray]) -> tuple[torch.Tensor, list[int]]:
        return self.extractor.padded(audio), [self.params.n_frames(len(a)) for a in audio]

    def normalization(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std over every training frame (clean audio)."""
        total = torch.zeros(self.params.n_features, dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        count = 0
        for start in range(0, len(self.split.train_audio), 64):
            feats, lengths = self._features(self.split.train_audio[start : start + 64])
            for b, n in enumerate(lengths):
                f = feats[b, :n].double()
                total += f.sum(0)
                total_sq += f.square().sum(0)
                count += n
        mean = total / max(count, 1)
        std = torch.sqrt(torch.clamp(total_sq / max(count, 1) - mean.square(), min=1e-8))
        return mean.float(), std.float()

    # ----- one epoch -----
    def _batch_targets(
        self, lengths: list[int], labels: list[int], k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, steps, targets = [], [], []
        for b, (n_frames, label) in enumerate(zip(lengths, labels, strict=True)):
            for step in prefix_steps(max(1, n_frames // k), self.step_s):
                rows.append(b)
                steps.append(step)
                targets.append(label)
        return torch.tensor(rows), torch.tensor(steps), torch.tensor(targets)

    def _batch_inputs(
        self, batch: list[tuple[int, int, int]], learner: Learner
    ) -> tuple[torch.Tensor, list[int], list[int]] | None:
        """Features (augmented), frame counts and speakers of a batch's windows; windows shorter than one output
        step are dropped, and None when fewer than two are left."""
        augmenter, k = learner.augmenter, learner.model.config.frame_stack
        audio, labels = [], []
        for item, start, length in batch:
            piece = self.split.train_audio[item][start : start + length]
            audio.append(augmenter.waveform(piece) if augmenter else piece)
            labels.append(self.split.train_labels[item])
        feats, lengths = self._features(audio)
        usable = [n for n in lengths if n >= k]
        if len(usable) < len(lengths):
            keep = [i for i, n in enumerate(lengths) if n >= k]
            if len(keep) < 2:
                return None
            feats, lengths, labels = feats[keep], [lengths[i] for i in keep], [labels[i] for i in keep]
        if augmenter is not None:
            feats = augmenter.spec_augment(feats, lengths, learner.model.feature_mean)
        return feats, lengths, labels

    def _train_epoch(self, learner: Learner, margin: float, settings: TrainSettings) -> tuple[float, float]:
        net, model, optimizer = learner.net, learner.model, learner.optimizer
        net.train()
        assert settings.batch_size is not None
        batches = self._epoch_windows(settings.batch_size)
        loss_sum, correct, seen, terms = 0.0, 0, 0, 0
        k = model.config.frame_stack
        for batch in batches:
            inputs = self._batch_inputs(batch, learner)
            if inputs is None:
                continue
            feats, lengths, labels = inputs
            rows, steps, targets = self._batch_targets(lengths, labels, k)
            cosine = net(feats, rows, steps)
            logits = margin_logits(cosine, targets, margin, model.config.scale)
            loss = F.cross_entropy(logits, targets, learner.class_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(net.parameters(), 5.0)
            optimizer.step()
            learner.scheduler.step()
            loss_sum += float(loss.detach()) * len(targets)
            terms += len(targets)
            final = torch.tensor([i == len(rows) - 1 or rows[i + 1] != rows[i] for i in range(len(rows))])
            correct += int((cosine[final].argmax(1) == targets[final]).sum())
            seen += int(final.sum())
            if self.progress:
                self.progress("batch", 1)
        return loss_sum / max(1, terms), correct / max(1, seen)

    def validate(self, model: SpeakerModel, items: list[np.ndarray], item_labels: list[int]) -> WindowScores:
        return window_scores(model, self.extractor, items, item_labels, self.settings.window_s)

    # ----- the run -----
    def run(self, resume: bool = False, on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
        settings = self.resolved()
        assert settings.epochs is not None and settings.batch_size is not None
        torch.set_num_threads(self.ranks.threads(settings.threads))
        learner, per_epoch = self._learner(settings)
        fit = self._fit(learner, settings)
        run = RunState([], Best(-1.0, 0, None))
        if resume and (resumed := self._resume(learner.model, learner.optimizer, learner.scheduler)) is not None:
            run = resumed
        started = time.monotonic()
        if self.progress:
            self.progress("start", per_epoch * settings.epochs)
            self.progress("advance", per_epoch * (run.first_epoch - 1))
        self._epochs(fit, run, settings, started, on_epoch)
        bundle = self._finish_bundle(learner.model, settings, run, started)
        return TrainResult(bundle=bundle, history=run.history)

    def _learner(self, settings: TrainSettings) -> tuple[Learner, int]:
        """The network and what trains it, and the optimizer steps of an epoch (the schedule is planned on them;
        counting them draws one epoch's windows)."""
        assert settings.epochs is not None and settings.batch_size is not None
        model = self._new_model(settings)
        net = self._training_net(model)
        optimizer = self._optimizer(net, settings)
        per_epoch = max(1, len(self._epoch_windows(settings.batch_size)))
        scheduler = self._schedule(optimizer, per_epoch * settings.epochs, per_epoch)
        counts = np.bincount(self.split.train_labels, minlength=len(self.labels)).astype(np.float64)
        weights = class_weights(counts, settings.balance)
        augmenter = Augmenter(AugmentSettings(), self.rng, self.noise_clips) if settings.augment else None
        return Learner(net, model, optimizer, scheduler, augmenter, weights), per_epoch

    def _new_model(self, settings: TrainSettings) -> SpeakerModel:
        """A freshly initialised network, normalising its input by the training audio's features."""
        config = ModelConfig(
            n_features=self.params.n_features,
            n_speakers=len(self.labels),
            cell=cast(CellKind, settings.cell),
            hidden=settings.hidden,
            layers=settings.layers,
            frame_stack=settings.frame_stack,
            embedding_dim=settings.embedding_dim,
            dropout=settings.dropout,
            scale=settings.scale,
        )
        model = SpeakerModel(config)
        mean, std = self.normalization()
        model.set_normalization(mean, std)
        return model

    def _training_net(self, model: SpeakerModel) -> nn.Module:
        """What the epochs run: the model with its margin head, under DistributedDataParallel with several
        processes."""
        net = TrainingNet(model)
        return nn.parallel.DistributedDataParallel(net) if self.ranks.distributed else net

    @staticmethod
    def _optimizer(net: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
        params = [p for p in net.parameters() if p.requires_grad]
        if settings.optimizer == "rmsprop":
            return torch.optim.RMSprop(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
        return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)

    @staticmethod
    def _schedule(
        optimizer: torch.optim.Optimizer, total_steps: int, per_epoch: int
    ) -> torch.optim.lr_scheduler.LRScheduler:
        """A linear warm-up over two epochs or a tenth of the run, whichever is shorter, then a cosine decay to
        2% of the rate."""
        warmup = min(per_epoch * 2, total_steps // 10 + 1)
        decay_steps = max(1, total_steps - warmup)  # a run of one step has no decay phase

        def lr_at(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / decay_steps)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)

    def _fit(self, learner: Learner, settings: TrainSettings) -> Fit:
        """The epoch loop's steps for this network: augmentation fades out over the planned epochs, and early
        stopping waits until it is off; without held-out audio the training accuracy stands in for validation."""
        epochs, augmenter = settings.epochs, learner.augmenter
        assert epochs is not None

        def train_epoch(epoch: int, margin: float) -> tuple[float, float]:
            if augmenter is not None:
                augmenter.strength = augmentation_strength(epoch, epochs)
            return self._train_epoch(learner, margin, settings)

        return Fit(
            model=learner.model,
            optimizer=learner.optimizer,
            scheduler=learner.scheduler,
            train_epoch=train_epoch,
            validate=lambda train_acc: self._validation_accuracy(learner.model, train_acc),
            may_stop=lambda: augmenter is None or augmenter.strength == 0.0,
        )

    def _validation_accuracy(self, model: SpeakerModel, train_acc: float) -> float:
        """On the held-out audio; without any, the training accuracy stands in (the model file says so)."""
        accuracy = self.validate(model, self.split.val_audio, self.split.val_labels).accuracy
        return train_acc if accuracy is None else accuracy

    def _finish_bundle(
        self, model: SpeakerModel, settings: TrainSettings, run: RunState, started: float
    ) -> ModelBundle:
        """Centroids, the calibrated unknown threshold and the training record."""
        s = self.split
        weights_acc = self.validate(model, s.val_audio, s.val_labels).accuracy
        references = ReferenceEmbeddings.of(model, self.extractor, s)
        references.install(model, len(self.labels), with_held_out=False)
        calibrated = self._calibrate(model, settings)
        log.info(
            "validation accuracy: %s with trained weights, %s with centroids",
            *(f"{acc:.4f}" if acc is not None else "not measured" for acc in (weights_acc, calibrated.centroid_acc)),
        )
        if s.val_audio:
            # Calibrated on audio the centroids had not seen; the shipped centroids use all of it.
            references.install(model, len(self.labels), with_held_out=True)
        return self._bundle(
            model, settings, run, run.wall_s(started), calibrated, {}, self._enrollment(s.train_audio, s.train_labels)
        )

    def _calibrate(self, model: SpeakerModel, settings: TrainSettings) -> Calibrated:
        """The unknown threshold at `target_far` on pseudo-strangers, the genuine scores from held-out audio the
        installed references do not include."""
        held_out = self.validate(model, self.split.val_audio, self.split.val_labels)
        impostor = self.validate(model, *pseudo_strangers(self.split)).impostor
        threshold, far, frr = calibrate_threshold(held_out.genuine, impostor, settings.target_far)
        record = calibration_record(settings.target_far, far, frr, STRANGERS, int(impostor.size))
        return Calibrated({"min_score": threshold}, record, held_out.accuracy)
