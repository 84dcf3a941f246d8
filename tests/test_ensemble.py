"""Heads trained side by side ship as one model whose head embedding is exactly their mean."""

from __future__ import annotations

import pytest
import torch

from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from train.ensemble import merged_heads
from train.fit import TrainSettings


def _head(seed: int) -> EncoderSpeakerModel:
    torch.manual_seed(seed)
    model = EncoderSpeakerModel(EncoderModelConfig(n_speakers=3, head_hidden=8, dropout=0.0))
    with torch.no_grad():
        for parameter in (model.adapt.weight, model.adapt.bias, model.from_gru.weight):
            parameter.normal_(0, 0.2)
    return model.eval()


def test_merged_heads_embed_as_the_mean_of_the_heads_chunk_by_chunk() -> None:
    heads = [_head(seed) for seed in (1, 2, 3)]
    for head in heads[1:]:
        head.encoder.load_state_dict(heads[0].encoder.state_dict())
    merged = merged_heads(heads)
    assert merged.config.head_hidden == 24
    encoded = torch.randn(2, 12, 256)
    expected = torch.stack([h.head(encoded, torch.zeros(1, 2, 8))[0] for h in heads]).mean(dim=0)
    state = torch.zeros(1, 2, 24)
    pieces = []
    for chunk in encoded.split(5, dim=1):
        out, state = merged.head(chunk, state)
        pieces.append(out)
    torch.testing.assert_close(torch.cat(pieces, dim=1), expected, rtol=1e-5, atol=1e-5)
    assert not torch.equal(heads[0].head(encoded, torch.zeros(1, 2, 8))[0], expected)


def test_one_head_is_shipped_as_it_is() -> None:
    head = _head(0)
    assert merged_heads([head]) is head


def test_heads_of_different_sizes_are_refused() -> None:
    small = _head(0)
    large = EncoderSpeakerModel(EncoderModelConfig(n_speakers=3, head_hidden=16))
    with pytest.raises(ValueError, match="one configuration"):
        merged_heads([small, large])


def test_a_tuned_top_layer_trains_one_head() -> None:
    with pytest.raises(ValueError, match="--heads 1"):
        TrainSettings(heads=2, tune_top=True)
    with pytest.raises(ValueError, match="heads must be 1-8"):
        TrainSettings(heads=0)
    assert TrainSettings(tune_top=True).heads is None
