"""What a speaker's reference is made of, for trained speakers and enrolled ones alike."""

from __future__ import annotations

import numpy as np
import torch

from spkidd.encoder import GE2E_FEATURES
from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from spkidd.features import FeatureExtractor
from spkidd.inference import reference_embeddings
from train.fit import stratified_split
from train.references import ReferenceEmbeddings


def test_reference_views_are_the_piece_streamed_and_short_utterances_heard_from_their_start() -> None:
    """A 3.5-s piece: a view every 0.25 s after its first second streamed whole, then its two 2-s crops (1 s apart)
    each after 1 and 1.5 s and at its end; a piece under a second gives only its streamed last step."""
    torch.manual_seed(0)
    model = EncoderSpeakerModel(EncoderModelConfig(n_speakers=2, window_frames=40, windows=2)).eval()
    extractor = FeatureExtractor(GE2E_FEATURES)
    rng = np.random.default_rng(0)
    piece = np.convolve(rng.standard_normal(56000), np.hanning(30), mode="same").astype(np.float32) * 0.05
    tiny = piece[:15000]
    views = reference_embeddings(model, extractor, [piece, tiny])
    with torch.no_grad():
        whole = model.embed_sequence(torch.from_numpy(extractor(piece))[None])[0].numpy()
        crops = [
            model.embed_sequence(torch.from_numpy(extractor(piece[s : s + 32000]))[None])[0].numpy() for s in (0, 16000)
        ]
        short = model.embed_sequence(torch.from_numpy(extractor(tiny))[None])[0].numpy()
    streamed = whole[list(range(20, whole.shape[0], 5))]
    expected = np.concatenate([streamed, *(crop[[19, 29, crop.shape[0] - 1]] for crop in crops)])
    assert views[0].shape == expected.shape == (len(streamed) + 6, model.config.embedding_dim)
    np.testing.assert_allclose(views[0], expected, atol=1e-3)
    np.testing.assert_allclose(views[1], short[-1:], atol=1e-3)


def test_the_shipped_references_join_a_held_out_tail_to_the_clip_it_was_cut_from() -> None:
    """A speaker with one long clip is validated on its tail: calibration's references are the views of the rest,
    the shipped ones the views of the whole clip. A speaker with four clips has one held out whole: the shipped
    references hold all four, calibration's the other three."""
    torch.manual_seed(0)
    model = EncoderSpeakerModel(EncoderModelConfig(n_speakers=2, window_frames=40, windows=2)).eval()
    extractor = FeatureExtractor(GE2E_FEATURES)
    rng = np.random.default_rng(0)
    long_clip = np.convolve(rng.standard_normal(80000), np.hanning(30), mode="same").astype(np.float32) * 0.05
    clips = [long_clip] + [long_clip[i * 12000 : i * 12000 + 20000] * (1 + i) for i in range(4)]
    split = stratified_split(clips, [0, 1, 1, 1, 1], 0.1, np.random.default_rng(0))
    assert split.cut_from == {0: 0} and len(split.val_audio) == 2
    references = ReferenceEmbeddings.of(model, extractor, split)

    def views(pieces: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(reference_embeddings(model, extractor, pieces))

    np.testing.assert_allclose(references.raw[references.training], views(split.train_audio), atol=1e-5)
    shipped_clips = [*split.train_audio[1:], split.val_audio[1], long_clip]
    np.testing.assert_allclose(references.raw[references.shipped], views(shipped_clips), atol=1e-5)
    counts = [len(v) for v in reference_embeddings(model, extractor, shipped_clips)]
    assert references.labels[references.shipped].tolist() == np.repeat([1, 1, 1, 1, 0], counts).tolist()
