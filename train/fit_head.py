"""Training the household GRU on the pretrained encoder (`spkidd train`, the default `--encoder ge2e`).

The encoder's LSTM stays frozen (`--tune-top` trains its top layer), so its output for a training sequence is computed
once: pools of sequences are built from pieces of different training speakers joined back to back (so the GRU learns
to hold a voice and to let go when another takes over, as in a conversation the gate merges into one utterance), most
of them with noise or a room added, run through the rolling-window encoder once, and the head is trained on the stored
per-step LSTM outputs with the loss at every step the encoder can tell (UNHEARD). Epochs cost seconds; training stops
when the validation accuracy per step (on sequences of held-out audio, clean and noisy) stops improving. Afterwards
every speaker's reference comes from its training audio as the daemon would stream it, and the unknown threshold is
calibrated.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spkidd import SAMPLE_RATE
from spkidd.decide import DecisionSettings
from spkidd.encoder import GE2E_FEATURES, HIDDEN
from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from spkidd.features import FeatureParams
from spkidd.freed_memory import trim_freed_memory
from spkidd.inference import step_scores
from spkidd.modelfile import ModelBundle
from train.augment import Augmenter, AugmentSettings
from train.calibrate import (
    SMALL_HOUSEHOLD,
    calibrate_min_speech,
    calibrate_threshold,
    calibration_record,
    final_answer_shares,
    small_household_threshold,
)
from train.distributed import Ranks
from train.encoder_weights import load_weights
from train.ensemble import merged_heads
from train.fit import STRANGERS, TrainSettings, WindowScores, margin_logits, pseudo_strangers, window_scores
from train.head_parallel import EpochPart, HeadNet, HeadWorkers, step_cosines
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
    model_state,
)

log = logging.getLogger(__name__)

HEAD_AUGMENT = AugmentSettings(noise_prob=0.6, snr_db=(5.0, 30.0), reverb_prob=0.25, gain_db=10.0)
"""Stronger than for the scratch network: the frozen encoder cannot be hurt by it, and homes are noisy."""

PIECES_PER_SEQUENCE = (1, 4)
PIECE_S = (0.8, 3.5)
BATCH_SEQUENCES = 32
SORTED_BATCHES = 8
"""Batches per run of the shuffled pool sorted by length (`length_sorted_batches`): enough for batches of even
length (padding fell from 52% to 17% of the GRU's steps on P1's pools and from 50% to 11% on P2-like ones; P1's
epochs from 3.7 to 2.5 s), few enough that which sequences meet in a batch still changes from epoch to epoch."""
ENCODE_BATCH = 16
"""Sequences encoded at once. A batch's features and the encoder's outputs at every frame take about 14 MB per
sequence of the longest kind (14 s) while they are computed, and the next batch's features are computed meanwhile:
in batches of 64 P2's encoding peaked at 1.32 GB, in 16 at 1.0 GB. A sequence's outputs are the same in any batch
(the same model to the bit)."""
VALIDATION_BATCH = 16
"""Validation sequences scored at once: P2's held-out clips run to 700 steps, and the heads' states of 128 such took
0.9 GB while they were scored (32: 0.25 GB), every epoch. A sequence's probabilities are the same in any batch."""
TOP_LR_FACTOR = 0.1
HEADS = 2
"""Heads trained side by side and averaged (train.ensemble)."""
IMPOSTORS = "held-out speech of the other speakers"
"""The frozen encoder has not learnt to push the household's voices apart, so their held-out speech is an honest
stand-in for strangers: on P2 it calibrated to 0.531 where speed-changed voices gave 0.546. Speed-changed copies of
synthetic voices that differ mainly in pitch sound like each other to it (a 0.84 threshold that rejected half of a
household's own held-out sentences), so they only stand in for strangers without held-out speech, and in a small
household (train.calibrate.SMALL_HOUSEHOLD) where they ask for more than the other voices, up to the default."""


UNHEARD = -1
"""The target of a step whose oldest encoder window still holds the voice before a change of speaker: the embedding
the head gets cannot tell the new voice yet (the window turns over up to two seconds later), so the loss and the
validation skip such steps. Training the head to name the new voice there anyway (every step the speaker speaking
then) measured worse on the development split, 64.1 against 66.6 (mean of its nine figures, two seeds), most of all
in noise (after 1 s at 20 dB SNR 68.4% against 73.8%), and no better in its conversations."""


@dataclass
class EncodedPool:
    """Per sequence: the encoder's LSTM output at every step (n, 256), before its top layer (which may be tuned),
    and the speaker speaking then (n,), UNHEARD where the encoder cannot know it yet."""

    hidden: list[torch.Tensor]
    targets: list[torch.Tensor]

    def stacked(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every heard step of every sequence as one (steps, 256) tensor, and the targets; a rank's share may be
        empty."""
        if not self.hidden:
            return torch.zeros(0, HIDDEN), torch.zeros(0, dtype=torch.long)
        targets = torch.cat(self.targets)
        heard = targets != UNHEARD
        return torch.cat(self.hidden)[heard], targets[heard]

    def heard_targets(self) -> torch.Tensor:
        """The targets of `stacked`, without gathering the encoder outputs (validation needs only these)."""
        targets = torch.cat(self.targets) if self.targets else torch.zeros(0, dtype=torch.long)
        return targets[targets != UNHEARD]


def step_targets(owners: np.ndarray, window_ages: np.ndarray, params: FeatureParams, step_frames: int) -> np.ndarray:
    """(n,) targets of n steps: the speaker at each step's last frame, UNHEARD where the oldest encoder window
    (`window_ages` of every frame, from the start of the sequence) began before the last change of speaker.
    `owners` is the speaker of every sample."""
    frames = len(window_ages)
    centres = np.minimum(np.arange(frames) * params.hop_length + params.win_length // 2, len(owners) - 1)
    speaker = owners[centres]
    changes = np.concatenate([[0], np.cumsum(speaker[1:] != speaker[:-1])])
    last = np.arange(step_frames - 1, frames, step_frames)
    first = last - window_ages[last] + 1
    return np.where(changes[last] == changes[first], speaker[last], UNHEARD)


@dataclass(frozen=True)
class Joined:
    """A sequence of pieces back to back: views of the audio they are cut from, joined only while the sequence is
    encoded. Every pool's sequences are drawn before the first is encoded, and as joined copies with the speaker of
    every sample (int64) they took 70 MB per minute of training audio (six pools: 2.3 GB for P2's 35 minutes)."""

    parts: list[np.ndarray]
    speakers: list[int]

    @property
    def samples(self) -> int:
        return sum(len(part) for part in self.parts)

    def audio(self) -> np.ndarray:
        return np.concatenate(self.parts)

    def owners(self) -> np.ndarray:
        """The speaker of every sample."""
        return np.repeat(np.asarray(self.speakers, dtype=np.int64), [len(part) for part in self.parts])


def join_pieces(audio: list[np.ndarray], labels: list[int], rng: np.random.Generator, total_s: float) -> list[Joined]:
    """Sequences of 1-4 pieces of different speakers back to back, about `total_s` seconds of audio in all."""
    by_speaker: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_speaker.setdefault(label, []).append(i)
    speakers = sorted(by_speaker)
    sequences: list[Joined] = []
    made = 0.0
    while made < total_s:
        joined, previous = Joined([], []), -1
        for _ in range(int(rng.integers(PIECES_PER_SEQUENCE[0], PIECES_PER_SEQUENCE[1] + 1))):
            choices = [s for s in speakers if s != previous] or speakers
            speaker = choices[int(rng.integers(len(choices)))]
            item = audio[by_speaker[speaker][int(rng.integers(len(by_speaker[speaker])))]]
            length = min(len(item), int(rng.uniform(*PIECE_S) * SAMPLE_RATE))
            start = int(rng.integers(0, len(item) - length + 1))
            joined.parts.append(item[start : start + length])
            joined.speakers.append(speaker)
            previous = speaker
        sequences.append(joined)
        made += joined.samples / SAMPLE_RATE
    return sequences


def length_sorted_batches(lengths: list[int], size: int, rng: np.random.Generator) -> list[list[int]]:
    """Batches of `size` sequences in random order, each of sequences of similar length: the shuffled sequences
    are cut into runs of SORTED_BATCHES batches and each run is sorted by length. A batch is padded to its longest
    sequence, and in batches drawn at random half the GRU's steps were padding."""
    order = rng.permutation(len(lengths))
    by_length = np.asarray(lengths)
    run = size * SORTED_BATCHES
    runs = [order[i : i + run] for i in range(0, len(order), run)]
    sortish = np.concatenate([r[np.argsort(by_length[r], kind="stable")] for r in runs]) if runs else order
    batches = [sortish[i : i + size].tolist() for i in range(0, len(sortish), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class HeadTrainer(TrainerBase):
    """The household GRU on the pretrained encoder (`spkidd train`, the default `--encoder ge2e`)."""

    progress_label = "encoding, then training"
    checkpoint_encoder = "ge2e"

    encoder_weights: dict[str, torch.Tensor]

    def _read_inputs(self) -> None:
        """The pretrained encoder's weights: a missing download is reported before the plan."""
        self.encoder_weights = load_weights()

    def _feature_params(self, settings: TrainSettings) -> FeatureParams:
        return GE2E_FEATURES

    def resolved(self) -> TrainSettings:
        """Fills the `None` settings: the head is small, so epochs are cheap and early stopping decides. A tuned top
        layer belongs to one head (merged heads share one encoder)."""
        s = self.settings
        heads = s.heads or (1 if s.tune_top else HEADS)
        return replace(
            s, batch_size=s.batch_size or BATCH_SEQUENCES, epochs=s.epochs or 60, patience=s.patience or 8, heads=heads
        )

    def plan_text(self, plan: TrainSettings) -> str:
        one = f"GRU head {plan.head_hidden}"
        head = f"{plan.heads} GRU heads of {plan.head_hidden} (averaged)" if plan.heads != 1 else one
        return (
            f"plan: up to {plan.epochs} epochs (patience {plan.patience}), GE2E encoder (frozen) in {plan.windows} "
            f"windows of {plan.window_frames / 100:g} s{' (top layer tuned)' if plan.tune_top else ''}, "
            f"{'noise floor subtracted, ' if plan.denoise else ''}"
            f"{head}, "
            f"{plan.pools} encoded pools, "
            f"augmentation {'on' if plan.augment else 'off'}"
        )

    # ----- data -----
    def _new_model(self, settings: TrainSettings) -> EncoderSpeakerModel:
        config = EncoderModelConfig(
            n_speakers=len(self.labels),
            window_frames=settings.window_frames,
            windows=settings.windows,
            step_frames=settings.step_frames,
            head_hidden=settings.head_hidden,
            scale=settings.scale,
            denoise=settings.denoise,
        )
        model = EncoderSpeakerModel(config)
        model.load_encoder(self.encoder_weights)
        for parameter in model.encoder.parameters():
            parameter.requires_grad_(False)
        if settings.tune_top:
            for parameter in model.encoder.net.linear.parameters():
                parameter.requires_grad_(True)
        return model

    def _encode(self, model: EncoderSpeakerModel, sequences: list[Joined], augmenter: Augmenter | None) -> EncodedPool:
        """Runs the frozen encoder over every sequence (length-sorted batches, padded at the end: it is causal).
        The next batch is augmented and its features computed in a thread while the encoder runs: numpy's FFTs and
        torch's kernels leave the interpreter free, and on P1 the noise and rooms took 4 of the pools' 13 s. What
        the batches freed goes back to the system before the next pool."""
        order = sorted(range(len(sequences)), key=lambda i: sequences[i].samples)
        longest = max((self.params.n_frames(joined.samples) for joined in sequences), default=0)
        ages = model.encoder.window_ages(torch.zeros(1, dtype=torch.long), longest)[0].max(dim=0).values.numpy()
        pool = EncodedPool([], [])
        model.eval()
        size = ENCODE_BATCH
        groups = [[sequences[i] for i in order[start : start + size]] for start in range(0, len(order), size)]

        def features(group: list[Joined]) -> torch.Tensor:
            return self.extractor.padded([augmenter.waveform(j.audio()) if augmenter else j.audio() for j in group])

        with ThreadPoolExecutor(max_workers=1) as ahead:
            upcoming = ahead.submit(features, groups[0]) if groups else None
            for index, group in enumerate(groups):
                assert upcoming is not None
                frames = upcoming.result()
                upcoming = ahead.submit(features, groups[index + 1]) if index + 1 < len(groups) else None
                self._add_encoded(pool, model, group, frames, ages)
                if self.progress:
                    self.progress("advance", len(group))
        trim_freed_memory()
        return pool

    def _add_encoded(
        self,
        pool: EncodedPool,
        model: EncoderSpeakerModel,
        group: list[Joined],
        frames: torch.Tensor,
        ages: np.ndarray,
    ) -> None:
        """Adds one batch's encoder outputs and step targets to `pool`."""
        k = model.config.step_frames
        with torch.no_grad():
            usable = (frames.shape[1] // k) * k
            at_steps, _ = model.hidden_steps(frames[:, :usable], model.initial_state(len(group)))
        for row, joined in enumerate(group):
            n = self.params.n_frames(joined.samples) // k
            pool.hidden.append(at_steps[row, :n].clone())
            pool.targets.append(torch.from_numpy(step_targets(joined.owners(), ages[: n * k], self.params, k)))

    def _augment_rngs(self, settings: TrainSettings) -> tuple[np.random.Generator, np.random.Generator]:
        """Random numbers for the training pools' noise and the noisy validation's. With several processes every
        rank has its own (they augment different sequences) and self.rng, which plans the pools and shuffles the
        batches, stays the same on every rank."""
        if not self.ranks.distributed:
            return self.rng, np.random.default_rng(settings.seed + 2)
        rank = self.ranks.rank
        return np.random.default_rng([settings.seed, 3, rank]), np.random.default_rng([settings.seed + 2, rank])

    def _pools(self, model: EncoderSpeakerModel, settings: TrainSettings) -> tuple[list[EncodedPool], EncodedPool]:
        """Training pools (joined and augmented anew each) and the validation pool: held-out audio joined and each
        item alone (a household's held-out clips can be shorter than the encoder's window), clean and noisy.
        With several processes each rank encodes and keeps its share of every pool."""
        s, share = self.split, self.ranks.share
        train_s = sum(len(a) for a in s.train_audio) / SAMPLE_RATE
        train_rng, noisy_rng = self._augment_rngs(settings)
        augmenter = Augmenter(HEAD_AUGMENT, train_rng, self.noise_clips) if settings.augment else None
        plans = [join_pieces(s.train_audio, s.train_labels, self.rng, train_s) for _ in range(settings.pools)]
        val_audio, val_labels = (s.val_audio, s.val_labels) if s.val_audio else (s.train_audio, s.train_labels)
        val_s = max(60.0, sum(len(a) for a in val_audio) / SAMPLE_RATE)
        val_plan = join_pieces(val_audio, val_labels, np.random.default_rng(settings.seed + 1), val_s)
        val_plan += [Joined([a], [label]) for a, label in zip(val_audio, val_labels, strict=True)]
        if self.progress:
            self.progress("start", sum(len(share(p)) for p in plans) + 2 * len(share(val_plan)))
        pools = [self._encode(model, share(plan), augmenter) for plan in plans]
        clean = self._encode(model, share(val_plan), None)
        noisy = self._encode(model, share(val_plan), Augmenter(HEAD_AUGMENT, noisy_rng, self.noise_clips))
        return pools, EncodedPool(clean.hidden + noisy.hidden, clean.targets + noisy.targets)

    # ----- epochs -----
    def _batches(self, pool: EncodedPool, batch: int) -> list[list[int]]:
        """This rank's batches of its share of the pool, `batch` sequences over all ranks: as many on every rank
        (each is one backward pass DDP waits for on all of them)."""
        per_rank = max(1, batch // self.ranks.world)
        batches = length_sorted_batches([len(t) for t in pool.targets], per_rank, self.rng)
        return batches[: self.ranks.smallest(len(batches))]

    @staticmethod
    def _padded(pool: EncodedPool, members: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        longest = max(len(pool.targets[i]) for i in members)
        x = torch.zeros(len(members), longest, pool.hidden[members[0]].shape[1])
        y = torch.zeros(len(members), longest, dtype=torch.long)
        mask = torch.zeros(len(members), longest, dtype=torch.bool)
        for row, i in enumerate(members):
            n, targets = len(pool.targets[i]), pool.targets[i]
            x[row, :n], y[row, :n], mask[row, :n] = pool.hidden[i], targets.clamp(min=0), targets != UNHEARD
        return x, y, mask

    def _train_epoch(
        self,
        net: nn.Module,
        ensemble: HeadNet,
        turn: list[EncodedPool],
        which: list[int],
        optimizer: torch.optim.Optimizer,
        class_weights: torch.Tensor | None,
        settings: TrainSettings,
        margin: float,
    ) -> EpochPart:
        """One pass of the `which` heads, each over its own pool of the turn in its own order (every head's batches
        are drawn, wherever it trains; the shortest pool's batches decide how many steps, pools differ by a
        sequence or two), each head with its own loss and gradient clipping."""
        net.train()
        assert settings.batch_size is not None
        every_head = [self._batches(pool, settings.batch_size) for pool in turn]
        steps = min(len(batches) for batches in every_head)
        part = EpochPart(0.0, 0, 0)
        for step in range(steps):
            batches = [self._padded(turn[i], every_head[i][step]) for i in which]
            cosines = net([x for x, _, _ in batches], which)
            losses = []
            for cosine, (_, y, mask) in zip(cosines, batches, strict=True):
                targets, scored = y[mask], cosine[mask]
                logits = margin_logits(scored, targets, margin, settings.scale)
                losses.append(F.cross_entropy(logits, targets, class_weights))
                part.correct += int((scored.argmax(1) == targets).sum())
                part.seen += len(targets)
                part.loss_sum += float(losses[-1].detach()) * len(targets)
            optimizer.zero_grad(set_to_none=True)
            torch.stack(losses).sum().backward()
            for i in which:
                torch.nn.utils.clip_grad_norm_(ensemble.heads[i].parameters(), 5.0)
            optimizer.step()
        return part

    def _validation_probs(self, ensemble: HeadNet, which: list[int], pool: EncodedPool) -> torch.Tensor:
        """The `which` heads' probabilities summed, at every heard step of the validation sequences (speaker
        changes included), as (steps, speakers)."""
        heads = [ensemble.heads[i] for i in which]
        for head in heads:
            head.eval()
        summed = [torch.zeros(0, len(self.labels))]
        with torch.no_grad():
            for start in range(0, len(pool.targets), VALIDATION_BATCH):
                members = list(range(start, min(start + VALIDATION_BATCH, len(pool.targets))))
                x, _, mask = self._padded(pool, members)
                probs = torch.stack([torch.softmax(h.scale * step_cosines(h, x), dim=-1) for h in heads]).sum(0)
                summed.append(probs[mask])
        return torch.cat(summed)

    def _validation_accuracy(self, probs: torch.Tensor, pool: EncodedPool) -> float:
        """Accuracy of the heads' summed probabilities over every rank's share, so that early stopping decides
        the same on every rank."""
        targets = pool.heard_targets()
        correct_all, seen_all = self.ranks.total(int((probs.argmax(-1) == targets).sum()), len(targets))
        return correct_all / max(1, seen_all)

    # ----- the run -----
    def run(self, resume: bool = False, on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
        settings = self.resolved()
        assert settings.heads is not None
        torch.set_num_threads(self.ranks.threads(settings.threads))
        ensemble = HeadNet([self._new_model(settings) for _ in range(settings.heads)], settings.seed)
        started = time.monotonic()
        run = self._trained(ensemble, settings, resume, started, on_epoch)
        trim_freed_memory()
        model = merged_heads(ensemble.heads)
        bundle = self._finish_bundle(model, settings, run, run.wall_s(started))
        return TrainResult(bundle=bundle, history=run.history)

    def _trained(
        self,
        ensemble: HeadNet,
        settings: TrainSettings,
        resume: bool,
        started: float,
        on_epoch: Callable[[EpochRecord], None] | None,
    ) -> RunState:
        """The pools encoded and the heads trained on them. The pools go when it returns, before the references
        and the calibration (P2's took 217 MB), and what the first validation freed goes back to the system before
        the heads' processes are forked (they start with the parent's pages)."""
        heads = ensemble.heads
        pools, val_pool = self._pools(heads[0], settings)
        self._start_from_centroids(heads, pools[0], self.ranks)
        optimizer = self._optimizer(ensemble, settings)
        weights = self._class_weights(settings)
        resumed = self._resume(ensemble, optimizer, None) if resume else None
        run = resumed or self._start(ensemble, val_pool)
        trim_freed_memory()
        epochs = _Epochs(self, ensemble, pools, val_pool, optimizer, weights, settings)
        with epochs.workers() as workers:
            self._epochs(epochs.fit(workers), run, settings, started, on_epoch)
        return run

    def _start(self, ensemble: HeadNet, val_pool: EncodedPool) -> RunState:
        """A run from its first epoch, its best so far the heads as they start (the encoder with centroid scoring),
        validated once."""
        everyone = list(range(len(ensemble.heads)))
        start_acc = self._validation_accuracy(self._validation_probs(ensemble, everyone, val_pool), val_pool)
        log.info("pretrained encoder alone: validation accuracy per step %.4f", start_acc)
        return RunState([], Best(start_acc, 0, model_state(ensemble)))

    def _random_state(self, model: nn.Module) -> dict[str, Any]:
        """Also every head's dropout generator (train.head_parallel.HeadNet)."""
        assert isinstance(model, HeadNet)
        return super()._random_state(model) | {"dropout": list(model.dropout_states)}

    def _restore_random(self, model: nn.Module, state: dict[str, Any]) -> None:
        assert isinstance(model, HeadNet)
        super()._restore_random(model, state)
        model.dropout_states = list(state["dropout"])

    def head_processes(self, settings: TrainSettings, heads: int) -> int:
        """One process per head as far as the cores (and --threads) allow; one under torchrun, whose ranks use the
        cores already."""
        if self.ranks.distributed:
            return 1
        cores = len(os.sched_getaffinity(0))
        return max(1, min(heads, cores, settings.threads or cores))

    @staticmethod
    def _optimizer(ensemble: HeadNet, settings: TrainSettings) -> torch.optim.Optimizer:
        """The head decays toward zero (where it leaves the encoder's answer as it is); a tuned top layer of the
        encoder must not decay (its pretrained weights are the point) and moves slower."""
        top = [p for h in ensemble.heads for p in h.encoder.net.linear.parameters()] if settings.tune_top else []
        head = [p for p in ensemble.parameters() if p.requires_grad and all(p is not t for t in top)]
        groups: list[dict[str, Any]] = [{"params": head, "weight_decay": settings.weight_decay * 100}]
        if top:
            groups.append({"params": top, "lr": settings.learning_rate * TOP_LR_FACTOR, "weight_decay": 0.0})
        return torch.optim.AdamW(groups, lr=settings.learning_rate)

    @staticmethod
    def _start_from_centroids(heads: list[EncoderSpeakerModel], pool: EncodedPool, ranks: Ranks) -> None:
        """The embeddings are centred as the shipped model centres them, and every speaker's weights start as the
        centroid of its encoder embeddings: before any update each head is the pretrained encoder with centroid
        scoring, the baseline training has to beat (the head's half of the embedding is the encoder's until then).
        Summed over every rank's share, so all start the same; computed once, as the heads share the encoder."""
        first = heads[0]
        hidden, targets = pool.stacked()
        with torch.no_grad():
            encoded = first.encoder.net.embed(hidden)
            raw = torch.cat([encoded, encoded], dim=-1)
            (count,) = ranks.total(len(raw))
            first.embedding_center.copy_(ranks.total_tensor(raw.sum(dim=0)) / count)
            sums = torch.zeros_like(first.speakers).index_add_(0, targets, first.unit(raw))
            first.speakers.copy_(F.normalize(ranks.total_tensor(sums), dim=-1))
            for head in heads[1:]:
                head.embedding_center.copy_(first.embedding_center)
                head.speakers.copy_(first.speakers)

    def _class_weights(self, settings: TrainSettings) -> torch.Tensor | None:
        """Weights by each speaker's samples of training audio."""
        counts = np.zeros(len(self.labels))
        for audio, label in zip(self.split.train_audio, self.split.train_labels, strict=True):
            counts[label] += len(audio)
        return class_weights(counts, settings.balance)

    def _window_scores(
        self, model: EncoderSpeakerModel, items: list[np.ndarray], labels: list[int], window_s: float
    ) -> WindowScores:
        """train.fit.window_scores of every rank's share of `items`, put together on every rank."""
        share = self.ranks.share
        return WindowScores.joined(
            self.ranks.gather(window_scores(model, self.extractor, share(items), share(labels), window_s))
        )

    def _calibrate(self, model: EncoderSpeakerModel, settings: TrainSettings) -> Calibrated:
        """On held-out speech the references do not include yet: the unknown threshold at `target_far` on
        impostors, and how much speech the decider waits for before a first name."""
        s = self.split
        held_out = self._window_scores(model, s.val_audio, s.val_labels, settings.window_s)
        threshold, far, frr, impostors, impostor_scores = self._threshold(model, settings, held_out)
        decision = {"min_score": threshold}
        wrong_first: float | None = None
        answers: dict[str, float] | None = None
        if s.val_audio:
            utterances = step_scores(model, self.extractor, s.val_audio)
            decision["min_speech_s"], wrong_first = calibrate_min_speech(
                DecisionSettings.from_model(decision), self.labels, model.scale, utterances, s.val_labels
            )
            answers = final_answer_shares(DecisionSettings.from_model(decision), model.scale, utterances, s.val_labels)
        calibration = calibration_record(settings.target_far, far, frr, impostors, impostor_scores)
        calibration["val_wrong_first"] = wrong_first
        calibration["val_answers"] = answers
        return Calibrated(decision, calibration, held_out.accuracy)

    def _threshold(
        self, model: EncoderSpeakerModel, settings: TrainSettings, held_out: WindowScores
    ) -> tuple[float, float | None, float | None, str, int]:
        """The unknown threshold, its rates, what stood in for strangers and how many scores of theirs: the other
        voices' held-out speech; in a small household (SMALL_HOUSEHOLD) the stricter of that and speed-changed
        voices; the speed-changed voices alone when nothing of another voice is held out."""
        others = held_out.impostor
        if others.size and len(self.labels) >= SMALL_HOUSEHOLD:
            return *calibrate_threshold(held_out.genuine, others, settings.target_far), IMPOSTORS, int(others.size)
        changed = self._window_scores(model, *pseudo_strangers(self.split), settings.window_s).impostor
        if not others.size:
            return *calibrate_threshold(held_out.genuine, changed, settings.target_far), STRANGERS, int(changed.size)
        threshold, far, frr, by_changed = small_household_threshold(
            held_out.genuine, others, changed, settings.target_far
        )
        chosen = (STRANGERS, changed) if by_changed else (IMPOSTORS, others)
        return threshold, far, frr, chosen[0], int(chosen[1].size)

    def _finish_bundle(
        self, model: EncoderSpeakerModel, settings: TrainSettings, run: RunState, wall_s: float
    ) -> ModelBundle:
        """Centroids, the calibrated decision thresholds and the training record; enrollment counts the
        held-out audio too, which the shipped references include."""
        s = self.split
        references = ReferenceEmbeddings.of(model, self.extractor, s, self.ranks)
        references.install(model, len(self.labels), with_held_out=False)
        calibrated = self._calibrate(model, settings)
        if s.val_audio:
            references.install(model, len(self.labels), with_held_out=True)
        about = {"encoder": "ge2e (resemblyzer 0.1.4 weights, Apache-2.0)"}
        enrollment = self._enrollment(s.train_audio + s.val_audio, s.train_labels + s.val_labels)
        return self._bundle(model, settings, run, wall_s, calibrated, about, enrollment)


class _Epochs:
    """The epoch loop's steps for the heads (train.trainer_base.Fit). Each epoch every head trains on the next pool
    in turn, the heads one pool apart, so that two heads differ in their augmentation as well as their start and
    order. The heads are spread over as many processes as cores (train.head_parallel); under torchrun the ranks
    share the sequences out instead, and DistributedDataParallel averages their gradients."""

    def __init__(
        self,
        trainer: HeadTrainer,
        ensemble: HeadNet,
        pools: list[EncodedPool],
        val_pool: EncodedPool,
        optimizer: torch.optim.Optimizer,
        weights: torch.Tensor | None,
        settings: TrainSettings,
    ) -> None:
        self.trainer, self.ensemble, self.optimizer = trainer, ensemble, optimizer
        self.pools, self.val_pool, self.weights, self.settings = pools, val_pool, weights, settings
        heads = len(ensemble.heads)
        processes = trainer.head_processes(settings, heads)
        self.which = [list(range(p, heads, processes)) for p in range(processes)]
        self.net: nn.Module = nn.parallel.DistributedDataParallel(ensemble) if trainer.ranks.distributed else ensemble

    def workers(self) -> AbstractContextManager[HeadWorkers | None]:
        if len(self.which) == 1:
            return nullcontext(None)
        return HeadWorkers(self.which[1:], self._trained_part, self._validation_part)

    def fit(self, workers: HeadWorkers | None) -> Fit:
        return Fit(
            model=self.ensemble,
            optimizer=self.optimizer,
            scheduler=None,
            train_epoch=lambda epoch, margin: self._train_epoch(workers, epoch, margin),
            validate=lambda _train_acc: self._validate(workers),
            may_stop=lambda: True,
        )

    def _turn(self, epoch: int) -> list[EncodedPool]:
        return [self.pools[(epoch - 1 + i) % len(self.pools)] for i in range(len(self.ensemble.heads))]

    def _part(self, which: list[int], epoch: int, margin: float) -> EpochPart:
        turn, settings = self._turn(epoch), self.settings
        return self.trainer._train_epoch(
            self.net, self.ensemble, turn, which, self.optimizer, self.weights, settings, margin
        )

    def _trained_part(self, which: list[int], epoch: int, margin: float) -> EpochPart:
        return self._part(which, epoch, margin).packed(self.ensemble, which, self.optimizer)

    def _validation_part(self, which: list[int]) -> torch.Tensor:
        return self.trainer._validation_probs(self.ensemble, which, self.val_pool)

    def _train_epoch(self, workers: HeadWorkers | None, epoch: int, margin: float) -> tuple[float, float]:
        if workers:
            workers.begin_epoch(epoch, margin)
        parts = [self._part(self.which[0], epoch, margin)]
        for part in workers.train_parts() if workers else []:
            part.install(self.ensemble, self.optimizer)
            parts.append(part)
        loss, correct, seen = self.trainer.ranks.total(
            sum(p.loss_sum for p in parts), sum(p.correct for p in parts), sum(p.seen for p in parts)
        )
        return loss / max(1, seen), correct / max(1, seen)

    def _validate(self, workers: HeadWorkers | None) -> float:
        probs = self._validation_part(self.which[0])
        for other in workers.validation_parts() if workers else []:
            probs = probs + other
        return self.trainer._validation_accuracy(probs, self.val_pool)
