"""The pretrained encoder as a stream: rolling windows, loudness, streaming = offline, batching, and parity with
the resemblyzer package's own network."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from spkidd.encoder import GE2E, GE2E_FEATURES, MEL_BANDS, RollingEncoder, native_bfloat16
from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from spkidd.features import FeatureExtractor, mel_filterbank
from train.encoder_weights import EncoderWeightsError, convert_wheel, load_weights

SUPPORT = Path(__file__).parent / "support"


def _frames(n: int, seed: int = 0, level: float = 1e-2) -> torch.Tensor:
    """Speech-like feature frames: positive mel power and a loud enough mean square (gain 1)."""
    g = torch.Generator().manual_seed(seed)
    mel = torch.rand(1, n, MEL_BANDS, generator=g) * level
    return torch.cat([mel, torch.full((1, n, 1), 0.01)], dim=-1)


def test_every_frame_comes_from_the_oldest_window_restarted_from_zero() -> None:
    torch.manual_seed(0)
    encoder = RollingEncoder(window_frames=20, windows=2).eval()
    frames = _frames(75)
    with torch.no_grad():
        rolled, _ = encoder.step(frames, encoder.initial_state())
        for t in range(75):
            ages = [(t - j * 10) % 20 + 1 for j in range(2) if t >= j * 10]
            start = t + 1 - max(ages)
            fresh = encoder.net(frames[:, start : t + 1, :MEL_BANDS])
            assert torch.allclose(rolled[0, t], fresh[0], atol=1e-5), t


def test_a_step_s_context_is_the_age_of_the_window_it_comes_from() -> None:
    model = EncoderSpeakerModel(EncoderModelConfig(n_speakers=2, window_frames=200, windows=2, step_frames=5))
    context = model.context_frames([0], 90)[0]
    assert context[:40].tolist() == list(range(5, 201, 5))
    assert context[40:60].tolist() == list(range(105, 201, 5))
    assert context[60:].tolist() == context[40:70].tolist()
    assert model.context_frames([37, 3], 20).tolist() == [context[37:57].tolist(), context[3:23].tolist()]


def test_a_window_that_has_not_started_costs_nothing() -> None:
    """Until the second window starts, the LSTM runs one row per stream; afterwards both (the numbers are the
    ones the test above holds to fresh windows)."""
    encoder = RollingEncoder(window_frames=20, windows=2).eval()
    rows_per_call: list[int] = []
    encoder.net.lstm.register_forward_hook(lambda _m, inputs, _o: rows_per_call.append(inputs[0].shape[0]))
    with torch.no_grad():
        state = encoder.initial_state(3)
        _, state = encoder.step(torch.cat([_frames(8, seed) for seed in range(3)]), state)
        assert rows_per_call == [3]
        rows_per_call.clear()
        _, state = encoder.step(torch.cat([_frames(8, seed) for seed in range(3)]), state)
        assert rows_per_call == [3, 6]


def test_bfloat16_is_chosen_only_where_the_cpu_computes_it(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw\n\nprocessor\t: 1\n")
    assert not native_bfloat16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    assert native_bfloat16(cpuinfo)
    cpuinfo.write_text("Features\t: fp asimd bf16\n")
    assert not native_bfloat16(cpuinfo)
    assert not native_bfloat16(tmp_path / "missing")


def test_bfloat16_embeddings_are_the_float32_ones_and_follow_loaded_weights() -> None:
    """In bfloat16 a stream still equals one pass (its state holds bfloat16 values exactly), and new weights
    reach the bfloat16 copy of the LSTM."""
    torch.manual_seed(2)
    exact = RollingEncoder(window_frames=200, bfloat16=False).eval()
    fast = RollingEncoder(window_frames=200, bfloat16=True).eval()
    fast.load_state_dict(exact.state_dict())
    frames = _frames(450, seed=6)
    with torch.no_grad():
        reference, _ = exact.step(frames, exact.initial_state())
        whole, _ = fast.step(frames, fast.initial_state())
        first, state = fast.step(frames[:, :173], fast.initial_state())
        rest, _ = fast.step(frames[:, 173:], state)
        assert torch.equal(torch.cat([first, rest], dim=1), whole)
        assert float((whole * reference).sum(-1).min()) >= 0.999
        other = RollingEncoder(window_frames=200, bfloat16=False).state_dict()
        fast.load_state_dict(other)
        exact.load_state_dict(other)
        reloaded, _ = fast.step(frames, fast.initial_state())
        expected, _ = exact.step(frames, exact.initial_state())
    assert float((reloaded * expected).sum(-1).min()) >= 0.999
    assert float((reloaded * whole).sum(-1).min()) < 0.99


def _model_with_a_working_head(n_speakers: int = 4, denoise: bool = False) -> EncoderSpeakerModel:
    torch.manual_seed(1)
    config = EncoderModelConfig(n_speakers=n_speakers, window_frames=40, windows=2, denoise=denoise)
    model = EncoderSpeakerModel(config)
    with torch.no_grad():
        model.adapt.weight.normal_(0, 0.05)
        model.from_gru.weight.normal_(0, 0.2)
    return model.eval()


def _with_pauses(frames: torch.Tensor, *spans: tuple[int, int]) -> torch.Tensor:
    """The frames with 40 dB quieter spans (a pause, a tail): steps the model holds."""
    out = frames.clone()
    for start, end in spans:
        out[:, start:end] *= 1e-4
    return out


@pytest.mark.parametrize("denoise", [False, True])
def test_streaming_steps_equal_the_offline_pass(denoise: bool) -> None:
    """With the noise floor subtracted too: the pauses set a floor that later steps subtract."""
    model = _model_with_a_working_head(denoise=denoise)
    frames = _with_pauses(_frames(333, seed=3), (0, 12), (120, 170), (290, 333))
    with torch.no_grad():
        offline = model.output(model.embed_sequence(frames)).probs
        rng = np.random.default_rng(0)
        state, outputs, i = model.initial_state(), [], 0
        while i < frames.shape[1]:
            n = int(rng.integers(1, 37))
            out, state = model.step(frames[:, i : i + n], state)
            if out is not None:
                outputs.append(out.probs)
            i += n
    streamed = torch.cat(outputs, dim=1)
    assert streamed.shape == offline.shape == (1, 66, 4)
    assert (streamed - offline).abs().max() <= 1e-5
    assert state.steps == 66 and state.pending.shape[1] == 3


@pytest.mark.parametrize("denoise", [False, True])
def test_streams_batched_at_different_phases_equal_each_stream_alone(denoise: bool) -> None:
    model = _model_with_a_working_head(denoise=denoise)
    a, b = _with_pauses(_frames(120, seed=4), (50, 80)), _with_pauses(_frames(120, seed=5), (0, 10), (90, 120))
    with torch.no_grad():
        alone_a = model.embed_sequence(a)
        alone_b = model.embed_sequence(b)
        _, state_a = model.step(a[:, :35], model.initial_state())
        _, state_b = model.step(b[:, :60], model.initial_state())
        out, both = model.step(torch.cat([a[:, 35:95], b[:, 60:120]]), model.batch_states([state_a, state_b]))
    assert out is not None
    assert torch.allclose(out.embeddings[0], alone_a[0, 7:19], atol=1e-5)
    assert torch.allclose(out.embeddings[1], alone_b[0, 12:24], atol=1e-5)
    split = model.unbatch_state(both, [state_a.steps, state_b.steps])
    assert [s.steps for s in split] == [19, 24]


def test_quiet_steps_hold_the_last_louder_answer() -> None:
    model = _model_with_a_working_head()
    frames = _with_pauses(_frames(200, seed=6), (100, 150), (180, 200))
    with torch.no_grad():
        held = model.embed_sequence(frames)[0]
        state = model.initial_state()
        raw = model.embeddings(model.encode_steps(frames, state)[0], state.gru)[0][0]
    loud = [j for j in range(40) if not 20 <= j < 30 and j < 36]
    assert all(torch.equal(held[j], raw[j]) for j in loud), "loud steps are the head's own answers"
    assert all(torch.equal(held[j], raw[19]) for j in range(20, 30)), "a pause holds the step before it"
    assert all(torch.equal(held[j], raw[35]) for j in range(36, 40)), "so does the quiet tail"
    assert not torch.equal(raw[25], raw[19]), "without the hold the answer would have moved"


def _cosines(x: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1) @ torch.nn.functional.normalize(references, dim=-1).T


def test_the_head_names_the_speaker_and_the_encoder_s_cosines_decide_unknown() -> None:
    """Probabilities come from the head's half of the references, the scores for the unknown threshold from the
    encoder's half: a head trained differently changes which speaker is likely, never how a voice scores."""
    model = _model_with_a_working_head()
    frames = _frames(60)
    with torch.no_grad():
        model.speakers.normal_()
        model.embedding_center.normal_(0.0, 0.01)
        out = model.output(model.embed_sequence(frames))
        state = model.initial_state()
        encoder = model.encode_steps(frames, state)[0][0]
        head = model.head(encoder[None], state.gru)[0][0]
        centre, references = model.embedding_center.split(256), model.speakers.split(256, dim=-1)
        assert torch.allclose(out.scores[0], _cosines(encoder - centre[1], references[1]), atol=1e-5)
        head_probs = torch.softmax(model.scale * _cosines(head - centre[0], references[0]), dim=-1)
        assert torch.allclose(out.probs[0], head_probs, atol=1e-5)
        model.from_gru.weight.normal_(0, 1.0)
        changed = model.output(model.embed_sequence(frames))
    assert torch.allclose(changed.scores, out.scores, atol=1e-6)
    assert not torch.allclose(changed.probs, out.probs, atol=1e-3)


def test_loudness_below_the_target_level_does_not_change_the_embedding() -> None:
    model = _model_with_a_working_head()
    extractor = FeatureExtractor(GE2E_FEATURES)
    rng = np.random.default_rng(0)
    voice = np.convolve(rng.standard_normal(32000), np.hanning(30), mode="same").astype(np.float32)
    voice /= np.sqrt(np.mean(voice**2))
    with torch.no_grad():
        quiet, quieter = (
            model.embed_sequence(torch.from_numpy(extractor(voice * level))[None]) for level in (10**-2.0, 10**-2.5)
        )
    assert torch.allclose(quiet, quieter, atol=1e-4)


def test_a_wheel_that_is_not_the_recorded_one_is_refused(tmp_path: Path) -> None:
    wheel = tmp_path / "Resemblyzer-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("resemblyzer/pretrained.pt", b"not the weights")
    with pytest.raises(EncoderWeightsError, match="SHA-256"):
        convert_wheel(wheel, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_weights_say_how_to_get_them(tmp_path: Path) -> None:
    with pytest.raises(EncoderWeightsError, match=r"setup\.sh"):
        load_weights(tmp_path / "nothing.safetensors")


@pytest.fixture(scope="session")
def resemblyzer_python() -> Path:
    """A throwaway venv with the resemblyzer package itself (and its librosa), kept between runs in the cache."""
    venv = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spkidd" / "resemblyzer-venv"
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "torch==2.13.0", "setuptools<81"], check=True)
        subprocess.run([*pip, "resemblyzer==0.1.4"], check=True)
        (venv / ".complete").write_text("ok\n")
    return python


@pytest.fixture(scope="module")
def package_outputs(resemblyzer_python: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, Path]:
    """A synthetic sentence and the package's filterbank, mel frames and embedding of it."""
    from spkidd.synthetic import synth_audio

    out = tmp_path_factory.mktemp("resemblyzer")
    wave = synth_audio("alice", "The quick brown fox jumps over the lazy dog near the river bank.")
    np.save(out / "wave.npy", wave.astype(np.float32))
    script = str(SUPPORT / "resemblyzer_reference.py")
    subprocess.run([str(resemblyzer_python), script, str(out / "wave.npy"), str(out)], check=True, capture_output=True)
    return wave, out


@pytest.mark.parametrize("bfloat16", [False, True])
def test_our_encoder_gives_the_package_s_embeddings(package_outputs: tuple[np.ndarray, Path], bfloat16: bool) -> None:
    """In float32 and in bfloat16 (what a CPU with native bfloat16 runs)."""
    _, out = package_outputs
    assert np.abs(mel_filterbank(GE2E_FEATURES) - np.load(out / "filterbank.npy")).max() < 1e-7
    mels = torch.from_numpy(np.load(out / "mels.npy")[None, :160]).float()
    net = GE2E(bfloat16)
    net.load_state_dict(load_weights(), strict=True)
    ours = EncoderSpeakerModel(EncoderModelConfig(n_speakers=1))
    ours.encoder.net.in_bfloat16 = bfloat16
    ours.load_encoder(load_weights())
    loud = torch.full((1, mels.shape[1], 1), 1.0)
    with torch.no_grad():
        direct = net(mels)[0].numpy()
        rolled, _ = ours.encoder.step(torch.cat([mels, loud], dim=-1), ours.encoder.initial_state())
    package = np.load(out / "embedding.npy")
    assert float(direct @ package) >= 0.999
    assert float(rolled[0, -1].numpy() @ package) >= 0.999


def test_feature_frames_are_the_package_s_frames_up_to_centring(package_outputs: tuple[np.ndarray, Path]) -> None:
    """The package centres its frames (librosa pads half a window); ours start at sample 0 as a stream must.
    Frames that cover the same samples agree."""
    wave, out = package_outputs
    package = np.load(out / "mels.npy")
    shifted = FeatureExtractor(GE2E_FEATURES)(np.concatenate([np.zeros(200, np.float32), wave]))[:, :MEL_BANDS]
    n = min(len(shifted), len(package))
    assert n >= 100
    assert np.allclose(shifted[2:n], package[2:n], rtol=1e-3, atol=1e-7)
