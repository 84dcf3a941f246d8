"""Speaker references: every speaker, trained or enrolled, is the centroid of its centred unit embeddings.

After training, the classifier weights are replaced by these centroids so that closed-set identification,
enrollment and open-set scoring are one mechanism in one geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from spkidd.encoder_model import EncoderSpeakerModel
from spkidd.features import FeatureExtractor
from spkidd.inference import reference_embeddings
from spkidd.modelfile import SpeakerNet
from train.distributed import Ranks

if TYPE_CHECKING:
    from train.fit import Split


@dataclass
class ReferenceEmbeddings:
    """Raw reference embeddings (spkidd.inference.reference_embeddings) of every training and held-out item,
    computed once: the references
    are first installed from the training crops (to calibrate the threshold on audio they have not seen), then
    from all of them (what the model ships with)."""

    raw: np.ndarray
    labels: np.ndarray
    held_out: np.ndarray

    @classmethod
    def of(
        cls, model: SpeakerNet, extractor: FeatureExtractor, split: Split, ranks: Ranks | None = None
    ) -> ReferenceEmbeddings:
        """With `ranks` of several processes each embeds its share of the items and every rank gets all of them:
        embedding is most of the cost after training."""
        ranks = ranks or Ranks()
        audio = split.train_audio + split.val_audio
        item_labels = split.train_labels + split.val_labels
        raws = ranks.unshare(reference_embeddings(model, extractor, ranks.share(audio)))
        counts = [len(raw) for raw in raws]
        labels = np.repeat(np.array(item_labels, dtype=np.int64), counts)
        held_out = np.repeat(np.arange(len(audio)) >= len(split.train_audio), counts)
        return cls(np.concatenate(raws), labels, held_out)

    def install(self, model: SpeakerNet, n_speakers: int, *, with_held_out: bool) -> None:
        """Sets the embedding centre (and for the scratch network the spread) over the training views, then every
        speaker's centroid, in place. Centring removes what every voice of the household shares (room, microphone,
        synthetic speech) and gives the cosines room for a threshold; the pretrained encoder's space is not
        rescaled per dimension: that cost 1 point of P2 top-1 (95.9% vs 96.8% centred only) and 5 at 0.5 s."""
        train = self.raw[~self.held_out]
        chosen = np.ones(len(self.raw), dtype=bool) if with_held_out else ~self.held_out
        with torch.no_grad():
            model.embedding_center.copy_(torch.from_numpy(train.mean(axis=0)))
            if not isinstance(model, EncoderSpeakerModel):
                model.embedding_scale.copy_(torch.from_numpy(np.maximum(train.std(axis=0), 1e-3)))
            units = model.unit(torch.from_numpy(self.raw[chosen]))
            index = torch.from_numpy(self.labels[chosen])
            sums = torch.zeros(n_speakers, units.shape[1]).index_add_(0, index, units)
            model.speakers.copy_(torch.nn.functional.normalize(sums, dim=-1))
