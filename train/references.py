"""Speaker references: every speaker, trained or enrolled, is the centroid of its centred unit embeddings.

After training, the classifier weights are replaced by these centroids so that closed-set identification,
enrollment and open-set scoring are one mechanism in one geometry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from spkidd import SAMPLE_RATE
from spkidd.encoder_model import EncoderSpeakerModel
from spkidd.features import FeatureExtractor
from spkidd.inference import reference_embeddings
from spkidd.modelfile import SpeakerNet
from train.distributed import Ranks

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from train.fit import Split


@dataclass
class ReferenceEmbeddings:
    """Raw reference embeddings (spkidd.inference.reference_embeddings), computed once: the references are first
    installed from the training items' views (to calibrate the threshold on held-out audio they have not seen),
    then from the whole clips' (what the model ships with). A held-out tail cut from a clip is joined to the rest
    of it again for the second: the streamed views of a clip cut in two rest on less speech near the cut. On the
    audio `benchmarks/dev_split.py` holds out (2-s windows taken every 0.5 s, 40 random sets of 51 speakers made
    strangers) the encoder's equal error rate at 2 s was 10.5% with references from the two parts and 8.7% from
    the whole clips."""

    raw: np.ndarray
    labels: np.ndarray
    training: np.ndarray
    """Per view: of a training item (the references calibration uses, and the embedding centre)."""
    shipped: np.ndarray
    """Per view: of a whole clip (the references the model ships with)."""

    @classmethod
    def of(
        cls, model: SpeakerNet, extractor: FeatureExtractor, split: Split, ranks: Ranks | None = None
    ) -> ReferenceEmbeddings:
        """With `ranks` of several processes each embeds its share of the items and every rank gets all of them:
        embedding is most of the cost after training."""
        ranks = ranks or Ranks()
        n_train = len(split.train_audio)
        cut = set(split.cut_from.values())
        held_whole = [v for v in range(len(split.val_audio)) if v not in split.cut_from]
        audio = split.train_audio + [split.val_audio[v] for v in held_whole]
        item_labels = split.train_labels + [split.val_labels[v] for v in held_whole]
        for v, t in sorted(split.cut_from.items()):
            audio.append(np.concatenate([split.train_audio[t], split.val_audio[v]]))
            item_labels.append(split.train_labels[t])
        seconds = sum(len(clip) for clip in [*split.train_audio, *split.val_audio]) / SAMPLE_RATE
        log.info(
            "speaker references from %d recordings (%.0f s; %d of them embedded both as cut for validation and "
            "whole), then the unknown threshold",
            n_train + len(held_whole),
            seconds,
            len(split.cut_from),
        )
        raws = ranks.unshare(reference_embeddings(model, extractor, ranks.share(audio)))
        counts = [len(raw) for raw in raws]
        training = np.arange(len(audio)) < n_train
        shipped = np.array([i >= n_train or i not in cut for i in range(len(audio))], dtype=bool)
        return cls(
            np.concatenate(raws),
            np.repeat(np.array(item_labels, dtype=np.int64), counts),
            np.repeat(training, counts),
            np.repeat(shipped, counts),
        )

    def install(self, model: SpeakerNet, n_speakers: int, *, with_held_out: bool) -> None:
        """Sets the embedding centre (and for the scratch network the spread) over the training views, then every
        speaker's centroid, in place. Centring removes what every voice of the household shares (room, microphone,
        synthetic speech) and gives the cosines room for a threshold; the pretrained encoder's space is not
        rescaled per dimension: that cost 1 point of P2 top-1 (95.9% vs 96.8% centred only) and 5 at 0.5 s."""
        train = self.raw[self.training]
        chosen = self.shipped if with_held_out else self.training
        with torch.no_grad():
            model.embedding_center.copy_(torch.from_numpy(train.mean(axis=0)))
            if not isinstance(model, EncoderSpeakerModel):
                model.embedding_scale.copy_(torch.from_numpy(np.maximum(train.std(axis=0), 1e-3)))
            units = model.unit(torch.from_numpy(self.raw[chosen]))
            index = torch.from_numpy(self.labels[chosen])
            sums = torch.zeros(n_speakers, units.shape[1]).index_add_(0, index, units)
            model.speakers.copy_(torch.nn.functional.normalize(sums, dim=-1))
