"""EncoderSpeakerModel: the pretrained rolling-window encoder, a stateful household GRU on top, cosine scoring.

Every `step_frames` frames the GRU takes the encoder's embedding of the last second or so of speech and carries
evidence from step to step: it can hold a voice that continues and let go when another takes over. Its output is
added to a learnt projection of the encoder's embedding (starting as the identity, with the GRU's share at zero),
so before training the model scores exactly the pretrained embeddings and training can only add to them.

The model's embedding is the head's and the encoder's side by side, and a speaker's reference is the centroid of
both: the head's half says which speaker it is (the probabilities), the encoder's half whether it is anyone
enrolled at all (the scores the `unknown` threshold is held to). Speakers, trained or enrolled, are rows of
`speakers` as in SpeakerModel, so enrollment, the unknown threshold and the decider work alike for both models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spkidd.encoder import HIDDEN, MEL_BANDS, WEIGHT_NAMES, EncoderState, RollingEncoder
from spkidd.features import whole_steps
from spkidd.model import CosineScoring, StepOutput, initial_speaker_weights


@dataclass(frozen=True)
class EncoderModelConfig:
    n_speakers: int
    kind: Literal["ge2e"] = "ge2e"
    n_features: int = MEL_BANDS + 1
    window_frames: int = 200
    windows: int = 2
    step_frames: int = 5
    head_hidden: int = 128
    dropout: float = 0.1
    scale: float = 30.0
    denoise: bool = False
    """Subtract the noise floor before the encoder (spkidd.denoise; `spkidd train --denoise`)."""

    def __post_init__(self) -> None:
        if self.kind != "ge2e":
            raise ValueError(f"unknown encoder {self.kind!r}")
        if self.n_features != MEL_BANDS + 1:
            raise ValueError(f"the GE2E encoder takes {MEL_BANDS} mel bands and the frame energy")
        if not 1 <= self.windows <= 8 or not 20 <= self.window_frames <= 400 or self.window_frames % self.windows:
            raise ValueError("window_frames must be 20-400 and a multiple of windows (1-8)")
        if not 1 <= self.step_frames <= 50 or not 1 <= self.head_hidden <= 1024 or not 1 <= self.n_speakers <= 100000:
            raise ValueError("step_frames, head_hidden or n_speakers out of range")
        if not isinstance(self.denoise, bool):
            raise ValueError("denoise must be true or false")

    @property
    def frame_stack(self) -> int:
        """Feature frames per model step (the name SpeakerModel uses)."""
        return self.step_frames

    @property
    def embedding_dim(self) -> int:
        """The head's embedding, then the encoder's (see EncoderSpeakerModel)."""
        return 2 * HIDDEN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


QUIET_DB = 20.0
"""A step this far below the stream's mean level so far is quiet (a pause, a clip's tail, the gate's hangover):
its answer is the last louder step's. The encoder's answer drifts in such steps; on FSDD's digits, whose tails are
quiet, holding it raised top-1 from 89.7% to 96.0% and left LibriSpeech's 2-s windows as they were."""


@dataclass
class HeadState:
    """Per stream: the encoder windows, the GRU, frames short of a step, and the last louder step's embedding
    (`loud` False until there is one)."""

    encoder: EncoderState
    gru: torch.Tensor
    pending: torch.Tensor
    held: torch.Tensor
    loud: torch.Tensor
    steps: int = 0


class EncoderSpeakerModel(CosineScoring):
    def __init__(self, config: EncoderModelConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = config.scale
        c = config
        self.encoder = RollingEncoder(c.window_frames, c.windows, c.denoise)
        self.gru = nn.GRU(HIDDEN, c.head_hidden, batch_first=True)
        self.dropout = nn.Dropout(c.dropout)
        self.adapt = nn.Linear(HIDDEN, HIDDEN)
        self.from_gru = nn.Linear(c.head_hidden, HIDDEN, bias=False)
        with torch.no_grad():
            self.adapt.weight.zero_()
            self.adapt.bias.zero_()
            self.from_gru.weight.zero_()
        self.register_buffer("embedding_center", torch.zeros(c.embedding_dim))
        self.register_buffer("embedding_scale", torch.ones(c.embedding_dim))
        self.speakers = initial_speaker_weights(c.n_speakers, c.embedding_dim)

    def load_encoder(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = set(WEIGHT_NAMES) - set(tensors)
        if missing:
            raise ValueError(f"encoder weights lack {sorted(missing)[:3]}")
        self.encoder.net.load_state_dict({name: tensors[name] for name in WEIGHT_NAMES}, strict=True)

    def with_speakers(self, references: torch.Tensor) -> EncoderSpeakerModel:
        """A copy of this model scoring against other speaker references (enrollment, forgetting)."""
        clone = EncoderSpeakerModel(replace(self.config, n_speakers=references.shape[0]))
        state = {k: v for k, v in self.state_dict().items() if k != "speakers"}
        clone.load_state_dict({**state, "speakers": references.detach().clone()})
        return clone.eval()

    # ----- streaming and offline ---------------------------------------------------------------------------------
    def initial_state(self, batch: int = 1) -> HeadState:
        return HeadState(
            encoder=self.encoder.initial_state(batch),
            gru=torch.zeros(1, batch, self.config.head_hidden),
            pending=torch.zeros(batch, 0, self.config.n_features),
            held=torch.zeros(batch, self.config.embedding_dim),
            loud=torch.zeros(batch, dtype=torch.bool),
        )

    def head(self, frame_embeddings: torch.Tensor, gru_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n, 256) encoder embeddings at step frames -> (B, n, 256) speaker embeddings, new GRU state."""
        carried, gru_state = self.gru(self.dropout(frame_embeddings), gru_state)
        return frame_embeddings + self.adapt(frame_embeddings) + self.from_gru(self.dropout(carried)), gru_state

    def embeddings(self, frame_embeddings: torch.Tensor, gru_state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n, 256) encoder embeddings -> (B, n, 512): the head's embedding, then the encoder's; new GRU state."""
        head, gru_state = self.head(frame_embeddings, gru_state)
        return torch.cat([head, frame_embeddings], dim=-1), gru_state

    # ----- scoring: the head names the speaker, the encoder says whether it is anyone enrolled ---------------------
    def unit(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Centred, each half to unit length (the whole to unit length too, so means of units work as usual)."""
        head, encoder = (embeddings - self.embedding_center).split(HIDDEN, dim=-1)
        return torch.cat([F.normalize(head, dim=-1), F.normalize(encoder, dim=-1)], dim=-1) / math.sqrt(2.0)

    def cosine_of_units(self, units: torch.Tensor) -> torch.Tensor:
        """The head's cosines: trained on the household to tell its voices apart, early and through changes."""
        return _half_cosines(units[..., :HIDDEN], self.speakers[:, :HIDDEN])

    def acceptance_of_units(self, units: torch.Tensor) -> torch.Tensor:
        """The pretrained encoder's cosines. Training pushes the household's voices apart in the head's space, and
        a stranger, pushed from nobody, lands closer to them there: on E1 the head's cosines gave an EER of 10.2%
        and the encoder's 7.1%, with the same top-1. And the encoder's space is one where held-out speech of the
        household's other voices is an honest stand-in for strangers when the threshold is calibrated."""
        return _half_cosines(units[..., HIDDEN:], self.speakers[:, HIDDEN:])

    def encode_steps(self, frames: torch.Tensor, state: HeadState) -> tuple[torch.Tensor, EncoderState]:
        """Whole steps of frames -> the encoder's embeddings at each step's last frame (what the head consumes)."""
        hidden, encoder_state = self.hidden_steps(frames, state)
        return self.encoder.net.embed(hidden), encoder_state

    def hidden_steps(self, frames: torch.Tensor, state: HeadState) -> tuple[torch.Tensor, EncoderState]:
        """Whole steps of frames -> the encoder's LSTM output at each step's last frame (before its top layer)."""
        k = self.config.step_frames
        hidden, encoder_state = self.encoder.hidden_step(frames, state.encoder)
        return hidden[:, k - 1 :: k], encoder_state

    def quiet_steps(self, frames: torch.Tensor, state: HeadState) -> torch.Tensor:
        """(B, n) whole steps of new frames -> (B, n // step_frames): which steps are QUIET_DB below the mean
        level of everything the stream has heard up to them (the frames' last column is their mean square)."""
        k = self.config.step_frames
        b, n, _ = frames.shape
        energy = frames[..., MEL_BANDS].double()
        running = state.encoder.mean_square_sum[:, None] + torch.cumsum(energy, dim=1)
        mean_so_far = running / (state.encoder.frames[:, None] + torch.arange(1, n + 1))
        step_energy = energy.reshape(b, n // k, k).mean(dim=-1)
        return step_energy < mean_so_far[:, k - 1 :: k] * 10 ** (-QUIET_DB / 10)

    @staticmethod
    def hold(
        embeddings: torch.Tensor, quiet: torch.Tensor, state: HeadState
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quiet steps take the embedding of the last louder step (before any, their own): the embeddings to
        score, and the new held embedding and `loud` flag."""
        b, n, _ = embeddings.shape
        steps = torch.arange(n).expand(b, n)
        last_loud = torch.cummax(torch.where(quiet, -1, steps), dim=1).values
        from_chunk = embeddings.gather(1, last_loud.clamp(min=0)[..., None].expand_as(embeddings))
        before = torch.where(state.loud[:, None, None], state.held[:, None, :], embeddings)
        held = torch.where((last_loud >= 0)[..., None], from_chunk, before)
        return held, held[:, -1], state.loud | (~quiet).any(dim=1)

    def step(self, frames: torch.Tensor, state: HeadState) -> tuple[StepOutput | None, HeadState]:
        """New (B, n, F) frames and the carried state -> outputs for each completed step (None if none)."""
        k = self.config.step_frames
        frames, pending = whole_steps(state.pending, frames, k)
        usable = frames.shape[1]
        if usable == 0:
            return None, replace(state, pending=pending)
        quiet = self.quiet_steps(frames, state)
        at_steps, encoder_state = self.encode_steps(frames, state)
        embeddings, gru = self.embeddings(at_steps, state.gru)
        scored, held, loud = self.hold(embeddings, quiet, state)
        new_state = HeadState(encoder_state, gru, pending, held, loud, steps=state.steps + usable // k)
        return self.output(scored), new_state

    def context_frames(self, first_steps: list[int], n: int) -> np.ndarray:
        """(streams, n): frames of audio the embeddings of the next n steps of each stream's utterance rest on,
        after its first_steps: the oldest encoder window's age at each step's last frame (decide.fallback_step).
        Batched: the runner asks for every stream of a step at once."""
        k = self.config.step_frames
        ages = self.encoder.window_ages(torch.tensor(first_steps) * k, n * k)
        return ages.max(dim=1).values[:, k - 1 :: k].numpy()

    def embed_sequence(self, frames: torch.Tensor) -> torch.Tensor:
        """Offline: (B, T, F) frames from a zero state -> embeddings at every step, (B, T // step_frames, 256)."""
        k = self.config.step_frames
        usable = (frames.shape[1] // k) * k
        state = self.initial_state(frames.shape[0])
        quiet = self.quiet_steps(frames[:, :usable], state)
        at_steps, _ = self.encode_steps(frames[:, :usable], state)
        return self.hold(self.embeddings(at_steps, state.gru)[0], quiet, state)[0]

    def batch_states(self, states: list[HeadState]) -> HeadState:
        """Several streams' states as one batch (every stream with no pending frames)."""
        return HeadState(
            encoder=self.encoder.batch_states([s.encoder for s in states]),
            gru=torch.cat([s.gru for s in states], dim=1),
            pending=torch.zeros(len(states), 0, self.config.n_features),
            held=torch.cat([s.held for s in states]),
            loud=torch.cat([s.loud for s in states]),
        )

    def unbatch_state(self, state: HeadState, steps_before: list[int]) -> list[HeadState]:
        encoders = self.encoder.unbatch_state(state.encoder)
        added = state.steps
        return [
            HeadState(
                encoder=e,
                gru=state.gru[:, i : i + 1],
                pending=state.pending[i : i + 1],
                held=state.held[i : i + 1],
                loud=state.loud[i : i + 1],
                steps=before + added,
            )
            for i, (e, before) in enumerate(zip(encoders, steps_before, strict=True))
        ]


def _half_cosines(units: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    return F.normalize(units, dim=-1) @ F.normalize(references, dim=-1).T
