"""The noise floor subtracted before the encoder: causal, chunk by chunk the same as in one pass, and the encoder
hears speech in noise closer to the clean speech with it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spkidd.denoise import NoiseFloor, subtract_floor
from spkidd.encoder import GE2E_FEATURES, MEL_BANDS, RollingEncoder
from spkidd.features import FeatureExtractor
from spkidd.synthetic import synth_audio
from train.augment import coloured_noise
from train.encoder_weights import load_weights


def _noisy_sentence() -> torch.Tensor:
    """Mel power of a synthetic sentence with pauses in noise at 10 dB SNR, (1, T, 40)."""
    speech = synth_audio("alice", "Turn on the kitchen light. Then, after a while, start the music.")
    noise = coloured_noise(len(speech), np.random.default_rng(0)) * np.sqrt(np.mean(speech**2) / 10)
    return torch.from_numpy(FeatureExtractor(GE2E_FEATURES)((speech + noise).astype(np.float32))[None, :, :MEL_BANDS])


def _run(mels: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    state, out, start = NoiseFloor.initial(1, MEL_BANDS), [], 0
    for n in chunks:
        cleaned, state = subtract_floor(mels[:, start : start + n], torch.tensor([start]), state)
        out.append(cleaned)
        start += n
    return torch.cat(out, dim=1)


def test_chunk_by_chunk_equals_one_pass() -> None:
    noisy = _noisy_sentence()
    total = noisy.shape[1]
    rng = np.random.default_rng(1)
    chunks: list[int] = []
    while sum(chunks) < total:
        chunks.append(min(int(rng.integers(1, 23)), total - sum(chunks)))
    whole = _run(noisy, [total])
    assert torch.allclose(_run(noisy, chunks), whole, rtol=1e-5, atol=1e-12)
    assert not torch.allclose(whole, noisy), "the floor was subtracted"


def test_nothing_is_subtracted_before_the_first_pause() -> None:
    loud = torch.full((1, 30, MEL_BANDS), 1e-2)
    cleaned = _run(loud, [30])
    assert torch.equal(cleaned, loud)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_encoder_hears_speech_in_noise_closer_to_the_clean_speech(seed: int) -> None:
    """What matters is the pretrained encoder's answer, not the spectrum (oversubtraction distorts weak bands,
    which the encoder, reading mel power, hardly weighs): its embeddings of the noisy sentence come closer to
    those of the clean one."""
    speech = synth_audio("alice", "Turn on the kitchen light. Then, after a while, start the music.")
    noise = coloured_noise(len(speech), np.random.default_rng(seed)) * np.sqrt(np.mean(speech**2) / 10)
    extractor = FeatureExtractor(GE2E_FEATURES)
    clean = torch.from_numpy(extractor(speech))[None]
    noisy = torch.from_numpy(extractor((speech + noise).astype(np.float32)))[None]
    similarity = {}
    for denoise in (False, True):
        encoder = RollingEncoder(denoise=denoise).eval()
        encoder.net.load_state_dict(load_weights())
        with torch.no_grad():
            heard_clean = encoder.step(clean, encoder.initial_state())[0][0, 150:]
            heard_noisy = encoder.step(noisy, encoder.initial_state())[0][0, 150:]
        similarity[denoise] = float((heard_clean * heard_noisy).sum(dim=-1).mean())
    assert similarity[True] > similarity[False] + 0.01
