"""Speaker references: every speaker, trained or enrolled, is the centroid of its centred unit embeddings.

After training, the classifier weights are replaced by these centroids so that closed-set identification,
enrollment and open-set scoring are one mechanism in one geometry.
"""

from __future__ import annotations

import numpy as np
import torch

from spkidd.features import FeatureExtractor
from spkidd.inference import crops, embed_pieces
from spkidd.modelfile import SpeakerNet


def install_centroids(
    model: SpeakerNet, extractor: FeatureExtractor, audio: list[np.ndarray], labels: list[int], n_speakers: int
) -> None:
    """Sets the embedding centre and spread (over the training crops) and every speaker's centroid, in place."""
    pieces, piece_labels = [], []
    for item, label in zip(audio, labels, strict=True):
        for crop in crops(item):
            pieces.append(crop)
            piece_labels.append(label)
    raw = embed_pieces(model, extractor, pieces)
    with torch.no_grad():
        model.embedding_center.copy_(torch.from_numpy(raw.mean(axis=0)))
        model.embedding_scale.copy_(torch.from_numpy(np.maximum(raw.std(axis=0), 1e-3)))
        units = model.unit(torch.from_numpy(raw))
        index = torch.tensor(piece_labels)
        sums = torch.zeros(n_speakers, units.shape[1]).index_add_(0, index, units)
        model.speakers.copy_(torch.nn.functional.normalize(sums, dim=-1))
