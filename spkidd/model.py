"""SpeakerModel: normalization -> frame stacking -> GRU/LSTM -> cumulative attentive statistics pooling ->
speaker embedding -> cosine scores against per-speaker reference vectors.

The pooling is cumulative, so the output at every step describes "the utterance so far": `step()` carries the
recurrent state and the running pooling sums and gives, chunk by chunk, exactly what the offline pass gives.
The classifier is a cosine against one reference vector per speaker, so a trained class and an enrolled
speaker (the mean embedding of a few clips) are the same thing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spkidd.features import whole_steps

CellKind = Literal["gru", "lstm"]
_ATTENTION_BOUND = 8.0
_MIN_VARIANCE = 1e-5


@dataclass(frozen=True)
class ModelConfig:
    n_features: int
    n_speakers: int
    cell: CellKind = "gru"
    hidden: int = 192
    layers: int = 2
    frame_stack: int = 3
    embedding_dim: int = 128
    dropout: float = 0.2
    scale: float = 30.0

    def __post_init__(self) -> None:
        if self.cell not in ("gru", "lstm"):
            raise ValueError(f"unknown recurrent cell {self.cell!r}")
        bounds = {"n_features": 256, "n_speakers": 100000, "hidden": 2048, "layers": 8, "frame_stack": 50}
        for name, most in (*bounds.items(), ("embedding_dim", 2048)):
            if not 1 <= getattr(self, name) <= most:
                raise ValueError(f"{name} must be 1-{most}, not {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class StreamState:
    """What a stream carries between `step()` calls; batch dimension first (or second for the RNN state)."""

    rnn: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    pending: torch.Tensor
    weight: torch.Tensor
    sum1: torch.Tensor
    sum2: torch.Tensor
    steps: int = 0


@dataclass
class StepOutput:
    """Per-step scores of the utterance so far: the cosine to every speaker that the `unknown` threshold is held
    to, and the softmax probabilities that say which speaker it is."""

    scores: torch.Tensor
    probs: torch.Tensor
    embeddings: torch.Tensor


def initial_speaker_weights(n_speakers: int, dim: int) -> nn.Parameter:
    """Random directions (normal, std 0.1), except on torch's meta device, where a model file's declared shapes are
    checked: a random draw there imports torch._dynamo and sympy, 2-5 s and ~75 MB for every command that loads a
    model."""
    weights = torch.empty(n_speakers, dim)
    if not weights.is_meta:
        weights.normal_(0.0, 0.1)
    return nn.Parameter(weights)


class CosineScoring(nn.Module):
    """The scoring both networks share: embeddings centred (and scaled) by the training statistics, to unit length,
    cosine against one reference vector per speaker, a softmax at `scale`. A trained class and an enrolled speaker
    are the same thing: a row of `speakers`."""

    embedding_center: torch.Tensor
    embedding_scale: torch.Tensor
    speakers: nn.Parameter
    scale: float

    def unit(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Embeddings centred on the training mean, scaled per dimension by the training spread, then to unit
        length: what speakers are compared by. Without this every voice shares a few dominant directions and all
        cosines crowd near 1, leaving no room for a threshold between enrolled voices and strangers."""
        return F.normalize((embeddings - self.embedding_center) / self.embedding_scale, dim=-1)

    def cosine_of_units(self, units: torch.Tensor) -> torch.Tensor:
        """The cosines that say which speaker it is (what training sharpens; the softmax is taken over them)."""
        return units @ F.normalize(self.speakers, dim=-1).T

    def acceptance_of_units(self, units: torch.Tensor) -> torch.Tensor:
        """The cosines the `unknown` threshold is held to; the same ones here, the encoder model's differ."""
        return self.cosine_of_units(units)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.cosine_of_units(self.unit(embeddings))

    def output_of_units(self, units: torch.Tensor, embeddings: torch.Tensor) -> StepOutput:
        probs = torch.softmax(self.scale * self.cosine_of_units(units), dim=-1)
        return StepOutput(scores=self.acceptance_of_units(units), probs=probs, embeddings=embeddings)

    def output(self, embeddings: torch.Tensor) -> StepOutput:
        return self.output_of_units(self.unit(embeddings), embeddings)


class SpeakerModel(CosineScoring):
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.scale = config.scale
        c = config
        self.register_buffer("feature_mean", torch.zeros(c.n_features))
        self.register_buffer("feature_std", torch.ones(c.n_features))
        rnn_cls = nn.GRU if c.cell == "gru" else nn.LSTM
        self.rnn = rnn_cls(
            c.n_features * c.frame_stack,
            c.hidden,
            num_layers=c.layers,
            batch_first=True,
            dropout=c.dropout if c.layers > 1 else 0.0,
        )
        self.attention = nn.Sequential(nn.Linear(c.hidden, c.hidden // 2), nn.Tanh(), nn.Linear(c.hidden // 2, 1))
        self.dropout = nn.Dropout(c.dropout)
        self.embedding = nn.Linear(2 * c.hidden, c.embedding_dim)
        self.register_buffer("embedding_center", torch.zeros(c.embedding_dim))
        self.register_buffer("embedding_scale", torch.ones(c.embedding_dim))
        self.speakers = initial_speaker_weights(c.n_speakers, c.embedding_dim)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(torch.clamp(std, min=1e-3))

    def with_speakers(self, references: torch.Tensor) -> SpeakerModel:
        """A copy of this model scoring against other speaker references (enrollment, forgetting)."""
        clone = SpeakerModel(replace(self.config, n_speakers=references.shape[0]))
        state = {k: v for k, v in self.state_dict().items() if k != "speakers"}
        clone.load_state_dict({**state, "speakers": references.detach().clone()})
        return clone.eval()

    def _encode(
        self, frames: torch.Tensor, rnn_state: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(B, T*k, F) whole stacks of frames -> hidden (B, T, H), pooling weights (B, T, 1), rnn state."""
        b, t, f = frames.shape
        k = self.config.frame_stack
        x = (frames - self.feature_mean) / self.feature_std
        x = x.reshape(b, t // k, k * f)
        hidden, new_state = self.rnn(x, rnn_state)
        score = self.attention(hidden)
        weight = torch.exp(_ATTENTION_BOUND * torch.tanh(score / _ATTENTION_BOUND))
        return hidden, weight, new_state

    def _embed(self, weight: torch.Tensor, sum1: torch.Tensor, sum2: torch.Tensor) -> torch.Tensor:
        mean = sum1 / weight
        std = torch.sqrt(torch.clamp(sum2 / weight - mean.square(), min=_MIN_VARIANCE))
        return self.embedding(self.dropout(torch.cat([mean, std], dim=-1)))

    def embed_sequence(self, frames: torch.Tensor) -> torch.Tensor:
        """Offline: (B, T, F) frames -> embeddings of every prefix, (B, T // frame_stack, E)."""
        k = self.config.frame_stack
        usable = (frames.shape[1] // k) * k
        hidden, weight, _ = self._encode(frames[:, :usable], None)
        w = torch.cumsum(weight, dim=1)
        s1 = torch.cumsum(weight * hidden, dim=1)
        s2 = torch.cumsum(weight * hidden.square(), dim=1)
        return self._embed(w, s1, s2)

    def initial_state(self, batch: int = 1) -> StreamState:
        h = self.config.hidden
        zeros = torch.zeros(batch, h)
        return StreamState(
            rnn=None,
            pending=torch.zeros(batch, 0, self.config.n_features),
            weight=torch.zeros(batch, 1),
            sum1=zeros,
            sum2=zeros.clone(),
        )

    def step(self, frames: torch.Tensor, state: StreamState) -> tuple[StepOutput | None, StreamState]:
        """Streaming: new (B, n, F) frames and the carried state -> outputs for each completed step.

        Returns None as output when the frames did not complete a stack.
        """
        k = self.config.frame_stack
        frames, pending = whole_steps(state.pending, frames, k)
        usable = frames.shape[1]
        if usable == 0:
            return None, replace(state, pending=pending)
        hidden, weight, rnn_state = self._encode(frames, state.rnn)
        w = state.weight[:, None, :] + torch.cumsum(weight, dim=1)
        s1 = state.sum1[:, None, :] + torch.cumsum(weight * hidden, dim=1)
        s2 = state.sum2[:, None, :] + torch.cumsum(weight * hidden.square(), dim=1)
        out = self.output(self._embed(w, s1, s2))
        new_state = StreamState(
            rnn=rnn_state,
            pending=pending,
            weight=w[:, -1],
            sum1=s1[:, -1],
            sum2=s2[:, -1],
            steps=state.steps + usable // k,
        )
        return out, new_state

    def context_frames(self, first_steps: list[int], n: int) -> np.ndarray:
        """(streams, n): frames of audio the embeddings of the next n steps of each stream's utterance rest on,
        after its first_steps: all of it so far, as the pooling grows with the utterance (decide.fallback_step)."""
        return (np.asarray(first_steps)[:, None] + np.arange(1, n + 1)) * self.config.frame_stack

    def batch_states(self, states: list[StreamState]) -> StreamState:
        """Several streams' states as one batch (every stream with no pending frames)."""
        c = self.config

        def rnn_part(state: StreamState, part: int) -> torch.Tensor:
            if state.rnn is None:
                return torch.zeros(c.layers, 1, c.hidden)
            return state.rnn[part] if isinstance(state.rnn, tuple) else state.rnn

        rnn: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
        if all(s.rnn is None for s in states):
            rnn = None
        elif c.cell == "lstm":
            rnn = (torch.cat([rnn_part(s, 0) for s in states], 1), torch.cat([rnn_part(s, 1) for s in states], 1))
        else:
            rnn = torch.cat([rnn_part(s, 0) for s in states], 1)
        return StreamState(
            rnn=rnn,
            pending=torch.zeros(len(states), 0, c.n_features),
            weight=torch.cat([s.weight for s in states]),
            sum1=torch.cat([s.sum1 for s in states]),
            sum2=torch.cat([s.sum2 for s in states]),
        )

    def unbatch_state(self, state: StreamState, steps_before: list[int]) -> list[StreamState]:
        out = []
        for row, before in enumerate(steps_before):
            rnn: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None
            if isinstance(state.rnn, tuple):
                rnn = (state.rnn[0][:, row : row + 1], state.rnn[1][:, row : row + 1])
            else:
                assert state.rnn is not None
                rnn = state.rnn[:, row : row + 1]
            out.append(
                StreamState(
                    rnn=rnn,
                    pending=state.pending[row : row + 1],
                    weight=state.weight[row : row + 1],
                    sum1=state.sum1[row : row + 1],
                    sum2=state.sum2[row : row + 1],
                    steps=before + state.steps,
                )
            )
        return out
