import numpy as np
import pytest
import torch

from spkidd.features import FeatureExtractor, FeatureParams, complete_frames, mel_filterbank, whole_steps
from spkidd.modelfile import parameters_from


def _signal(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.mark.parametrize("kind", ["logmel", "mfcc"])
def test_streaming_equals_offline_for_random_chunk_sizes(kind: str) -> None:
    extractor = FeatureExtractor(FeatureParams(kind=kind))  # type: ignore[arg-type]
    audio = _signal()
    offline = extractor(audio)
    for seed in range(3):
        rng = np.random.default_rng(seed)
        tail, pieces, i = np.zeros(0, np.float32), [], 0
        while i < audio.size:
            n = int(rng.integers(1, 2500))
            segment, tail = complete_frames(extractor.params, np.concatenate([tail, audio[i : i + n]]))
            if segment is not None:
                pieces.append(extractor(segment))
            i += n
        streamed = np.concatenate(pieces)
        assert streamed.shape == offline.shape
        assert np.abs(streamed - offline).max() <= 1e-5


def test_whole_steps_keep_every_frame_in_order_across_chunks() -> None:
    frames = torch.arange(2 * 23 * 3, dtype=torch.float32).reshape(2, 23, 3)
    pending, stepped = torch.zeros(2, 0, 3), []
    for start, stop in ((0, 2), (2, 9), (9, 10), (10, 23)):
        ready, pending = whole_steps(pending, frames[:, start:stop], 3)
        assert ready.shape[1] % 3 == 0 and pending.shape[1] < 3
        stepped.append(ready)
    assert torch.equal(torch.cat([*stepped, pending], dim=1), frames) and pending.shape[1] == 2


def test_frame_count_and_shape() -> None:
    params = FeatureParams()
    extractor = FeatureExtractor(params)
    assert extractor(np.zeros(399, np.float32)).shape == (0, 40)
    assert extractor(np.zeros(16000, np.float32)).shape == (params.n_frames(16000), 40) == (98, 40)
    assert FeatureExtractor(FeatureParams(kind="mfcc", n_mfcc=13))(_signal(0.5)).shape[1] == 13


def test_mel_filterbank_peaks_at_increasing_frequencies() -> None:
    bank = mel_filterbank(FeatureParams())
    peaks = bank.argmax(axis=0)
    assert np.all(np.diff(peaks) >= 0) and peaks[-1] > peaks[0]
    assert np.allclose(bank.sum(axis=0), 1.0, atol=1e-5)


def test_tone_energy_lands_in_the_right_mel_band() -> None:
    params = FeatureParams()
    t = np.arange(16000) / 16000
    low = FeatureExtractor(params)(np.sin(2 * np.pi * 300 * t).astype(np.float32)).mean(0)
    high = FeatureExtractor(params)(np.sin(2 * np.pi * 3000 * t).astype(np.float32)).mean(0)
    assert low.argmax() < high.argmax()


def test_batch_equals_single() -> None:
    extractor = FeatureExtractor(FeatureParams())
    a, b = _signal(1.0, 1), _signal(1.0, 2)
    batch = extractor.batch(torch.from_numpy(np.stack([a, b]))).numpy()
    assert np.abs(batch[1] - extractor(b)).max() <= 1e-5


def test_params_round_trip_and_refuse_unknown_keys() -> None:
    params = FeatureParams(kind="mfcc", n_mels=32)
    assert parameters_from(FeatureParams, params.to_dict(), "feature") == params
    with pytest.raises(ValueError, match="unknown feature parameters: \\['dither'\\]"):
        parameters_from(FeatureParams, {**params.to_dict(), "dither": 1.0}, "feature")
    with pytest.raises(ValueError, match="unknown feature kind 'plp'"):
        FeatureParams(kind="plp")  # type: ignore[arg-type]
