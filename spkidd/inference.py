"""Offline identification of whole buffers, the reference the streaming path must equal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spkidd.features import FeatureExtractor
from spkidd.modelfile import ModelBundle


@dataclass(frozen=True)
class Scored:
    """Scores of one piece of audio: probabilities and cosine scores per label, and its embedding."""

    probs: np.ndarray
    scores: np.ndarray
    embedding: np.ndarray
    speech_s: float

    def top_k(self, labels: list[str], k: int) -> list[tuple[str, float]]:
        order = np.argsort(-self.probs)[:k]
        return [(labels[i], float(self.probs[i])) for i in order]


def score_features(bundle: ModelBundle, frames: np.ndarray) -> Scored | None:
    """Scores of the whole frame sequence (the last step of the cumulative output), or None if too short."""
    model = bundle.model
    if frames.shape[0] < model.config.frame_stack:
        return None
    with torch.no_grad():
        embeddings = model.embed_sequence(torch.from_numpy(frames)[None])
        out = model.output(embeddings[:, -1])
    hop = bundle.features.hop_length / bundle.features.sample_rate
    return Scored(
        probs=out.probs[0].numpy(),
        scores=out.scores[0].numpy(),
        embedding=out.embeddings[0].numpy(),
        speech_s=frames.shape[0] * hop,
    )


def score_audio(bundle: ModelBundle, audio: np.ndarray, extractor: FeatureExtractor | None = None) -> Scored | None:
    extractor = extractor or bundle.extractor()
    return score_features(bundle, extractor(audio))
