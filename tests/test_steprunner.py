"""The step runner's error isolation: one stream's failing work never fails the streams batched with it, and an
event loop that closed with a job in flight never stops the worker for the others (issue 11 item 6)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
import torch

from spkidd.decide import StepScores
from spkidd.features import FeatureExtractor, FeatureParams
from spkidd.model import ModelConfig, SpeakerModel
from spkidd.steprunner import StepRunner, Utterance


def _model() -> tuple[SpeakerModel, FeatureExtractor]:
    torch.manual_seed(0)
    features = FeatureParams()
    model = SpeakerModel(ModelConfig(n_features=features.n_features, n_speakers=2, hidden=32, layers=1)).eval()
    return model, FeatureExtractor(features)


def _speech(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-8000, 8000, 8000).astype(np.int16)


async def test_a_stream_whose_step_fails_does_not_fail_the_streams_batched_with_it() -> None:
    model, extractor = _model()
    alone = StepRunner()
    reference = await alone.compute(Utterance("good", model, extractor), _speech(1))
    await asyncio.to_thread(alone.close)

    runner = StepRunner(gather_s=1.0)
    runner.attach()
    runner.attach()
    good, bad = Utterance("good", model, extractor), Utterance("bad", model, extractor)
    bad.state.sum1 = torch.zeros(1, 7)  # a corrupted state: this stream's own step cannot run
    try:
        results = await asyncio.gather(
            runner.compute(good, _speech(1)), runner.compute(bad, _speech(2)), return_exceptions=True
        )
    finally:
        await asyncio.to_thread(runner.close)
    assert runner.batches == 1
    assert isinstance(results[1], RuntimeError)
    assert isinstance(results[0], StepScores) and isinstance(reference, StepScores), results
    np.testing.assert_allclose(results[0].probs, reference.probs, atol=1e-6)


def test_a_closed_event_loop_does_not_stop_the_runner_for_other_loops() -> None:
    """The worker computes a job only once its event loop is closed, so the hand-back surely meets a closed loop;
    the test goes on once that hand-back has returned, and another loop's job must still be served."""
    model, extractor = _model()
    runner = StepRunner()
    compute, hand_back = runner.run_batch, runner._hand_back
    loop_closed, handed_back = threading.Event(), threading.Event()

    def once_the_loop_is_closed(jobs: list[Any]) -> list[Any]:
        assert loop_closed.wait(30)
        return compute(jobs)

    def observed(jobs: list[Any], results: list[Any]) -> None:
        hand_back(jobs, results)
        handed_back.set()

    runner.run_batch = once_the_loop_is_closed  # type: ignore[method-assign]
    runner._hand_back = observed  # type: ignore[method-assign]
    gone = asyncio.new_event_loop()
    with pytest.raises(TimeoutError):
        gone.run_until_complete(asyncio.wait_for(runner.compute(Utterance("a", model, extractor), _speech(1)), 0.05))
    gone.close()
    loop_closed.set()
    assert handed_back.wait(30), "the worker never handed the first job back"

    async def later() -> StepScores | None:
        return await asyncio.wait_for(runner.compute(Utterance("b", model, extractor), _speech(2)), 10)

    try:
        assert isinstance(asyncio.run(later()), StepScores)
    finally:
        runner.close()


async def test_streams_with_their_own_extractors_share_one_stft(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every pipeline builds its own extractor; equal feature parameters still make one STFT per batch
    (issue 11 item 16)."""
    model, _ = _model()
    calls: list[int] = []
    original = FeatureExtractor.batch

    def counted(self: FeatureExtractor, waveforms: torch.Tensor) -> torch.Tensor:
        calls.append(waveforms.shape[0])
        return original(self, waveforms)

    monkeypatch.setattr(FeatureExtractor, "batch", counted)
    runner = StepRunner(gather_s=1.0)
    for _ in range(3):
        runner.attach()
    utterances = [Utterance(f"s{i}", model, FeatureExtractor(FeatureParams())) for i in range(3)]
    results = await asyncio.gather(*(runner.compute(u, _speech(i)) for i, u in enumerate(utterances)))
    await asyncio.to_thread(runner.close)
    assert all(r is not None for r in results)
    assert calls == [3], "one STFT call for the three streams"
