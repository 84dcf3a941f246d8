"""Feature extraction and model steps for every stream of a process, batched in one worker thread.

The event loop never runs torch: a stream hands its speech to `StepRunner.compute()` and awaits the result, so
model work hops threads explicitly, and streams that speak at once share one STFT and one GRU call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from spkidd.decide import StepScores
from spkidd.features import FeatureExtractor, FeatureParams, complete_frames, int16_to_float, whole_steps
from spkidd.inference import step_times
from spkidd.modelfile import SpeakerNet

log = logging.getLogger(__name__)

Member = TypeVar("Member", bound=tuple[int, object])


class Utterance:
    """Per-utterance streaming state: unconsumed samples, frames short of a whole stack, the model state.
    Only the runner's worker thread touches it, one job at a time."""

    def __init__(self, utterance_id: str, model: SpeakerNet, extractor: FeatureExtractor) -> None:
        self.utterance_id = utterance_id
        self.model = model
        self.extractor = extractor
        self.tail = np.zeros(0, dtype=np.float32)
        self.state: Any = model.initial_state()


@dataclass
class _Job:
    utterance: Utterance
    samples: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[StepScores | None]
    enqueued: float


Outcome = StepScores | BaseException | None
"""A job's result: the step's scores (None before a first step), or what went wrong."""


def _resolve_all(resolved: list[tuple[asyncio.Future[StepScores | None], Outcome]]) -> None:
    for future, result in resolved:
        if future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class StepRunner:
    """Feature extraction and model steps for any number of streams, in one worker thread.

    Jobs that are waiting when the worker comes round are run together: one STFT call per group of equal-length
    buffers and one batched GRU call per group with the same number of steps, each stream keeping its own state.
    While fewer jobs wait than streams are attached, the worker gathers for up to `gather_s` after the oldest
    job arrived: streams that speak at different moments still share batches, at the price of that much latency.
    A lone stream never waits. Results equal per-stream processing (and so the offline reference) up to float
    rounding.
    """

    def __init__(self, max_batch: int = 256, gather_s: float = 0.02) -> None:
        self.max_batch = max_batch
        self.gather_s = gather_s
        self.batches = 0
        self.jobs = 0
        self._clients = 0
        self._pending: list[_Job] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    async def compute(self, utterance: Utterance, samples: np.ndarray) -> StepScores | None:
        """New int16 samples of `utterance` -> scores of every model step they complete (None if no step)."""
        loop = asyncio.get_running_loop()
        job = _Job(utterance, samples, loop, loop.create_future(), time.monotonic())
        with self._wake:
            if self._closed:
                raise RuntimeError("the step runner is closed")
            self._pending.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="spkidd-steps", daemon=True)
                self._thread.start()
            self._wake.notify()
        return await job.future

    def attach(self) -> None:
        """A stream starts using this runner (so the worker knows how many could join a batch)."""
        with self._wake:
            self._clients += 1

    def detach(self) -> None:
        with self._wake:
            self._clients -= 1
            self._wake.notify()

    def close(self) -> None:
        """Finishes queued jobs, then stops the worker thread (blocks until it has)."""
        with self._wake:
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join()

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._wake:
                while not self._pending and not self._closed:
                    self._wake.wait()
                if not self._pending:
                    return
                self._gather()
                jobs = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
            self.batches += 1
            self.jobs += len(jobs)
            try:
                with torch.inference_mode():
                    results = self.run_batch(jobs)
            except Exception as exc:
                log.exception("model step failed for a batch of %d jobs", len(jobs))
                results = [exc] * len(jobs)
            self._hand_back(jobs, results)

    @staticmethod
    def _hand_back(jobs: list[_Job], results: list[Outcome]) -> None:
        """One wake-up per event loop for the whole batch (a wake-up is a write to the loop's self-pipe, and the
        daemon's streams share one loop): one per job was 2.4% of T1's CPU."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[StepScores | None], Outcome]]] = {}
        for job, result in zip(jobs, results, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, result))
        for loop, resolved in by_loop.items():
            # A closed event loop has nobody awaiting its jobs; the other loops' jobs go on.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve_all, resolved)

    def _gather(self) -> None:
        """Called with the lock held and jobs pending: waits briefly for other streams' jobs."""
        deadline = self._pending[0].enqueued + self.gather_s
        while not self._closed and len(self._pending) < min(self.max_batch, self._clients):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wake.wait(remaining)

    def run_batch(self, jobs: list[_Job]) -> list[Outcome]:
        """Each job's scores, or the exception of the work that failed for that job alone."""
        results: list[Outcome] = [None] * len(jobs)
        frames = self._features(jobs, results)
        groups: dict[tuple[int, int], list[tuple[int, torch.Tensor]]] = {}
        for i, (job, new) in enumerate(zip(jobs, frames, strict=True)):
            if new is None:
                continue
            utt = job.utterance
            ready, utt.state.pending = whole_steps(utt.state.pending, new[None], utt.model.config.frame_stack)
            if ready.shape[1]:
                groups.setdefault((id(utt.model), ready.shape[1]), []).append((i, ready))
        for members in groups.values():
            _isolated(members, results, lambda some: self._step_group(jobs, some, results))
        return results

    @staticmethod
    def _features(jobs: list[_Job], results: list[Outcome]) -> list[torch.Tensor | None]:
        """Complete feature frames of each job's new samples; one STFT per group of equal-length buffers with the
        same feature parameters (each pipeline has its own extractor; equal parameters compute equal frames)."""
        out: list[torch.Tensor | None] = [None] * len(jobs)
        groups: dict[tuple[FeatureParams, int], list[tuple[int, np.ndarray]]] = {}
        for i, job in enumerate(jobs):
            utt = job.utterance
            p = utt.extractor.params
            segment, utt.tail = complete_frames(p, np.concatenate([utt.tail, int16_to_float(job.samples)]))
            if segment is not None:
                groups.setdefault((p, len(segment)), []).append((i, segment))

        def extract(members: list[tuple[int, np.ndarray]]) -> None:
            extractor = jobs[members[0][0]].utterance.extractor
            batch = extractor.batch(torch.from_numpy(np.stack([seg for _, seg in members])))
            for row, (i, _) in enumerate(members):
                out[i] = batch[row]

        for members in groups.values():
            _isolated(members, results, extract)
        return out

    @staticmethod
    def _step_group(jobs: list[_Job], members: list[tuple[int, torch.Tensor]], results: list[Outcome]) -> None:
        """One batched model step for streams with the same model and the same number of new frames."""
        utts = [jobs[i].utterance for i, _ in members]
        model: Any = utts[0].model  # either network; both batch their own kind of state
        before = [u.state.steps for u in utts]
        out, after = model.step(torch.cat([f for _, f in members]), model.batch_states([u.state for u in utts]))
        assert out is not None
        scores, probs = out.scores.numpy(), out.probs.numpy()
        hop_s = utts[0].extractor.params.hop_s
        n = probs.shape[1]
        speech_s, context_s = step_times(model, hop_s, before, n)
        for row, (utt, state) in enumerate(zip(utts, model.unbatch_state(after, before), strict=True)):
            pending = utt.state.pending
            utt.state = state
            utt.state.pending = pending
            results[members[row][0]] = StepScores(
                scores=scores[row], probs=probs[row], speech_s=speech_s[row], context_s=context_s[row]
            )


def _isolated(members: list[Member], results: list[Outcome], work: Callable[[list[Member]], None]) -> None:
    """Runs `work` on a batch group; if it fails, on each member alone, so one stream's failure stays its own
    (its result becomes the exception) and the others are still computed."""
    try:
        work(members)
        return
    except Exception as exc:
        if len(members) == 1:
            log.exception("model step failed for one stream")
            results[members[0][0]] = exc
            return
        log.warning("a batch of %d streams failed (%r); running them one by one", len(members), exc)
    for member in members:
        try:
            work([member])
        except Exception as exc:
            log.exception("model step failed for one stream of a batch")
            results[member[0]] = exc
