import numpy as np
import pytest
import torch

from spkidd.model import ModelConfig, SpeakerModel


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_streaming_step_equals_offline_forward(cell: str) -> None:
    torch.manual_seed(0)
    model = SpeakerModel(ModelConfig(n_features=40, n_speakers=4, cell=cell)).eval()  # type: ignore[arg-type]
    frames = torch.randn(1, 301, 40)
    with torch.no_grad():
        offline = model.output(model.embed_sequence(frames)).probs
        rng = np.random.default_rng(0)
        state, outputs, i = model.initial_state(), [], 0
        while i < frames.shape[1]:
            n = int(rng.integers(1, 40))
            out, state = model.step(frames[:, i : i + n], state)
            if out is not None:
                outputs.append(out.probs)
            i += n
    streamed = torch.cat(outputs, dim=1)
    assert streamed.shape == offline.shape == (1, 100, 4)
    assert (streamed - offline).abs().max() <= 1e-4
    assert state.steps == 100 and state.pending.shape[1] == 1


def test_probabilities_sum_to_one_and_batch_is_independent() -> None:
    model = SpeakerModel(ModelConfig(n_features=20, n_speakers=3)).eval()
    frames = torch.randn(2, 60, 20)
    with torch.no_grad():
        both = model.output(model.embed_sequence(frames)).probs
        alone = model.output(model.embed_sequence(frames[1:])).probs
    assert torch.allclose(both.sum(-1), torch.ones(2, 20), atol=1e-5)
    assert (both[1] - alone[0]).abs().max() <= 1e-5


def test_with_speakers_keeps_the_network_and_replaces_references() -> None:
    model = SpeakerModel(ModelConfig(n_features=20, n_speakers=3)).eval()
    refs = torch.randn(5, model.config.embedding_dim)
    clone = model.with_speakers(refs)
    frames = torch.randn(1, 30, 20)
    with torch.no_grad():
        assert torch.allclose(model.embed_sequence(frames), clone.embed_sequence(frames))
        assert clone.output(clone.embed_sequence(frames)).probs.shape[-1] == 5
