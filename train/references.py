"""Speaker references: every speaker, trained or enrolled, is the centroid of its centred unit embeddings.

After training, the classifier weights are replaced by these centroids so that closed-set identification,
enrollment and open-set scoring are one mechanism in one geometry.
"""

from __future__ import annotations

import numpy as np
import torch

from spkidd import SAMPLE_RATE
from spkidd.features import FeatureExtractor
from spkidd.inference import embed_pieces
from spkidd.model import SpeakerModel

MIN_CHUNK_S = 1.0


def cut(piece: np.ndarray, chunk_s: float) -> list[np.ndarray]:
    """Chunks of `chunk_s`; up to 1.5 chunks stays whole; a short last chunk under 1 s is dropped."""
    size = int(chunk_s * SAMPLE_RATE)
    if len(piece) <= 1.5 * size:
        return [piece]
    chunks = [piece[i : i + size] for i in range(0, len(piece), size)]
    return [c for c in chunks if len(c) >= MIN_CHUNK_S * SAMPLE_RATE]


def unit_embeddings(model: SpeakerModel, extractor: FeatureExtractor, pieces: list[np.ndarray]) -> np.ndarray:
    raw = embed_pieces(model, extractor, pieces)
    with torch.no_grad():
        return model.unit(torch.from_numpy(raw)).numpy()


def install_centroids(
    model: SpeakerModel,
    extractor: FeatureExtractor,
    audio: list[np.ndarray],
    labels: list[int],
    n_speakers: int,
    chunk_s: float,
) -> None:
    """Sets the embedding centre (mean over the training chunks) and every speaker's centroid, in place."""
    chunks, chunk_labels = [], []
    for piece, label in zip(audio, labels, strict=True):
        for chunk in cut(piece, chunk_s):
            chunks.append(chunk)
            chunk_labels.append(label)
    raw = embed_pieces(model, extractor, chunks)
    with torch.no_grad():
        model.embedding_center.copy_(torch.from_numpy(raw.mean(axis=0)))
        units = model.unit(torch.from_numpy(raw))
        index = torch.tensor(chunk_labels)
        sums = torch.zeros(n_speakers, units.shape[1]).index_add_(0, index, units)
        model.speakers.copy_(torch.nn.functional.normalize(sums, dim=-1))
