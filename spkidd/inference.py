"""Offline identification of whole buffers, the reference the streaming path must equal."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from spkidd import SAMPLE_RATE
from spkidd.decide import StepScores, fallback_step, top_candidates
from spkidd.encoder_model import EncoderSpeakerModel
from spkidd.features import FeatureExtractor
from spkidd.modelfile import ModelBundle, SpeakerNet


@dataclass(frozen=True)
class Scored:
    """Scores of one piece of audio: probabilities and cosine scores per label, and its embedding; for a piece
    scored as a stream, the (scores, probs) of the step its final may fall back to (decide.final_answer) when that
    is not the last step."""

    probs: np.ndarray
    scores: np.ndarray
    embedding: np.ndarray
    speech_s: float
    fallback: tuple[np.ndarray, np.ndarray] | None = None

    def top_k(self, labels: list[str], k: int) -> dict[str, float]:
        return top_candidates(labels, self.probs, k)


def score_features(bundle: ModelBundle, frames: np.ndarray) -> Scored | None:
    """Scores of the whole frame sequence (the last step of the cumulative output), or None if too short."""
    return score_prefixes(bundle, frames, [frames.shape[0]])[0]


def score_prefixes(bundle: ModelBundle, frames: np.ndarray, lengths: list[int]) -> list[Scored | None]:
    """Scores after the first `lengths[i]` frames, from one pass: the model is causal, so each equals scoring
    that prefix alone (a test holds it to that), at the cost of one. None where a prefix is too short."""
    model = bundle.model
    k = model.config.frame_stack
    steps = [min(n, frames.shape[0]) // k - 1 for n in lengths]
    if max(steps, default=-1) < 0:
        return [None] * len(lengths)
    hop = bundle.features.hop_s
    speech_s, context_s = (times[0] for times in step_times(model, hop, [0], max(steps) + 1))
    fallbacks = [fallback_step(speech_s[: step + 1], context_s[: step + 1]) if step >= 0 else 0 for step in steps]
    with torch.no_grad():
        embeddings = model.embed_sequence(torch.from_numpy(frames[: (max(steps) + 1) * k])[None])
        out = model.output(embeddings[0, [max(step, 0) for step in steps] + fallbacks])
    scores, probs = out.scores.numpy(), out.probs.numpy()
    m = len(steps)
    return [
        Scored(
            probs=probs[i],
            scores=scores[i],
            embedding=out.embeddings[i].numpy(),
            speech_s=min(n, frames.shape[0]) * hop,
            fallback=None if fallbacks[i] == step else (scores[m + i], probs[m + i]),
        )
        if step >= 0
        else None
        for i, (step, n) in enumerate(zip(steps, lengths, strict=True))
    ]


def score_audio(bundle: ModelBundle, audio: np.ndarray, extractor: FeatureExtractor | None = None) -> Scored | None:
    extractor = extractor or bundle.extractor()
    return score_features(bundle, extractor(audio))


def consecutive_pieces(audio: np.ndarray, size: int, min_samples: int) -> list[tuple[int, np.ndarray]]:
    """(start, piece) of consecutive `size`-sample pieces; a shorter last piece is kept if it holds at least
    `min_samples`."""
    return list(pieces_of_blocks([audio], size, min_samples))


def pieces_of_blocks(blocks: Iterable[np.ndarray], size: int, min_samples: int) -> Iterator[tuple[int, np.ndarray]]:
    """consecutive_pieces of a recording that comes a block at a time (a decoded file's AudioStream), so that no more
    than a block and a piece of it are held; the same pieces, whatever the blocks' lengths."""
    start = 0
    rest = np.zeros(0, dtype=np.float32)
    for block in blocks:
        buffer = block if rest.size == 0 else np.concatenate([rest, block])
        whole = len(buffer) - len(buffer) % size
        for offset in range(0, whole, size):
            yield start, buffer[offset : offset + size]
            start += size
        rest = buffer[whole:]
    if rest.size and len(rest) >= min_samples:
        yield start, rest


def is_chunked(audio: np.ndarray, chunk_s: float, rate: int) -> bool:
    """Whether score_long cuts the recording into chunks: longer than 1.5 of them (identify then also draws its
    timeline)."""
    return len(audio) > head_samples(chunk_s, rate)


def head_samples(chunk_s: float, rate: int) -> int:
    """The most samples a recording that score_long scores in one piece holds."""
    return int(1.5 * int(chunk_s * rate))


Progress = Callable[[float, float | None], None]
"""Told (audio seconds done, seconds in all if known) as a long recording is scored chunk by chunk."""


def score_long(
    bundle: ModelBundle,
    audio: np.ndarray,
    chunk_s: float = 3.0,
    extractor: FeatureExtractor | None = None,
    report: Progress | None = None,
) -> tuple[Scored | None, int]:
    """A recording of any length: cut into `chunk_s` chunks (a last piece of >= 1 s is kept), each scored, and
    the whole scored by the mean of the chunks' unit embeddings (one long pass would drift from what the model
    saw in training); and how many chunks were scored. Audio up to 1.5 chunks is scored in one piece. `report` is
    told each chunk's end: an hour is 17 s of scoring, and a progress bar that does not move looks hung."""
    extractor = extractor or bundle.extractor()
    rate = bundle.features.sample_rate
    if not is_chunked(audio, chunk_s, rate):
        whole = score_audio(bundle, audio, extractor)
        return whole, int(whole is not None)
    return score_chunks(bundle, [audio], chunk_s, extractor, report, len(audio) / rate)


def score_chunks(
    bundle: ModelBundle,
    blocks: Iterable[np.ndarray],
    chunk_s: float,
    extractor: FeatureExtractor | None = None,
    report: Progress | None = None,
    total_s: float | None = None,
) -> tuple[Scored | None, int]:
    """score_long of a recording longer than 1.5 chunks, which may come a block at a time (`total_s` its length, if
    known, for `report`). Of each chunk only a copy of its embedding is kept: its Scored's arrays are views of torch
    tensors, and an hour's 1200 of them held on to 75 MB of freed memory (between them, glibc cannot give it back)."""
    extractor = extractor or bundle.extractor()
    rate = bundle.features.sample_rate
    embeddings: list[np.ndarray] = []
    speech_s = 0.0
    for start, piece in pieces_of_blocks(blocks, int(chunk_s * rate), rate):
        scored = score_audio(bundle, piece, extractor)
        if scored is not None:
            embeddings.append(scored.embedding.copy())
            speech_s += scored.speech_s
        if report is not None:
            report((start + len(piece)) / rate, total_s)
    if not embeddings:
        return None, 0
    return aggregate(bundle, np.stack(embeddings), speech_s), len(embeddings)


def aggregate(bundle: ModelBundle, embeddings: np.ndarray, speech_s: float) -> Scored:
    """Scores of several pieces of one speaker's audio (their raw embeddings, (n, E)), from the mean of their unit
    embeddings."""
    model = bundle.model
    with torch.no_grad():
        raw = torch.from_numpy(embeddings)
        units = model.unit(raw).mean(dim=0, keepdim=True)
        out = model.output_of_units(torch.nn.functional.normalize(units, dim=-1), raw.mean(dim=0, keepdim=True))
    return Scored(
        probs=out.probs[0].numpy(), scores=out.scores[0].numpy(), embedding=out.embeddings[0].numpy(), speech_s=speech_s
    )


def embed_pieces(
    model: SpeakerNet, extractor: FeatureExtractor, pieces: list[np.ndarray], batch: int = 64
) -> np.ndarray:
    """Raw embeddings of whole pieces of audio (the last cumulative step of each), batched: (n, E)."""
    k = model.config.frame_stack
    out = []
    with torch.no_grad():
        for start in range(0, len(pieces), batch):
            group = pieces[start : start + batch]
            embeddings = model.embed_sequence(extractor.padded(group))
            last = torch.tensor([max(0, extractor.params.n_frames(len(p)) // k - 1) for p in group])
            out.append(embeddings[torch.arange(len(group)), last].numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.embedding_dim), dtype=np.float32)


REFERENCE_SETTLE_S = 1.0
REFERENCE_EVERY_S = 0.25
FRESH_CROP_S = 2.0
FRESH_HOP_S = 1.0
FRESH_VIEW_S = (1.0, 1.5)


def reference_embeddings(model: SpeakerNet, extractor: FeatureExtractor, pieces: list[np.ndarray]) -> list[np.ndarray]:
    """Per piece, raw embeddings that stand for its voice, for trained speakers' references and enrollment alike.

    The scratch network embeds overlapping 1.5-s crops (its pooling grows with the utterance). The encoder model
    gives two kinds of views: the piece streamed whole, and short utterances cut from it heard from their start."""
    if not isinstance(model, EncoderSpeakerModel):
        per_piece = [crops(piece) for piece in pieces]
        flat = embed_pieces(model, extractor, [c for group in per_piece for c in group])
        return np.split(flat, np.cumsum([len(group) for group in per_piece])[:-1]) if pieces else []
    streamed, fresh = _streamed_steps(model, extractor), _fresh_steps(model, extractor)
    crop_steps = extractor.params.n_frames(round(FRESH_CROP_S * SAMPLE_RATE)) // model.config.frame_stack
    # A piece's first crop starts where the piece does, and the model is causal: its views are the streamed pass's.
    first = _views(model, extractor, pieces, lambda n: streamed(n) + fresh(min(n, crop_steps)))
    later = [crops(piece, FRESH_CROP_S, FRESH_HOP_S)[1:] for piece in pieces]
    views = _views(model, extractor, [c for group in later for c in group], fresh)
    starts = np.cumsum([0] + [len(group) for group in later])
    return [np.concatenate([first[i], *views[starts[i] : starts[i + 1]]]) for i in range(len(pieces))]


def _step_count(model: SpeakerNet, extractor: FeatureExtractor, seconds: float) -> int:
    """Model steps in `seconds` of audio."""
    step_s = model.config.frame_stack * extractor.params.hop_s
    return round(seconds / step_s)


def _streamed_steps(model: SpeakerNet, extractor: FeatureExtractor) -> Callable[[int], list[int]]:
    """A piece run as the daemon streams an utterance (its encoder windows restart in turn, so no LSTM state lives
    longer than one window), a view every 0.25 s once a second of speech has been heard: the views of a long
    utterance, at a third of the cost of re-embedding crops."""
    settle = _step_count(model, extractor, REFERENCE_SETTLE_S)
    every = max(1, _step_count(model, extractor, REFERENCE_EVERY_S))
    return lambda n: list(range(min(settle, n - 1), n, every))


def _fresh_steps(model: SpeakerNet, extractor: FeatureExtractor) -> Callable[[int], list[int]]:
    """A 2-s crop (FRESH_CROP_S, 1 s apart) heard from its start after 1 and 1.5 s and at its end. The household
    GRU's embedding of a short utterance is not what it says deep into a long one, and a home's utterances last one
    to three seconds. On the development split (the same trained heads, only the references differing; two seeds)
    these views beside the streamed ones raised top-1 after 0.5 / 1 / 2 s from 59.8 / 83.9 / 94.3% to 61.7 / 84.7 /
    94.6% and lowered `unknown` from 19.4% to 17.4%; views after 0.5 s too gave 63.2 / 85.8 / 94.3% but raised
    `unknown` to 23.3%. Crops shorter than a second give none."""
    at = [_step_count(model, extractor, age) - 1 for age in FRESH_VIEW_S]
    return lambda n: [s for s in at if s < n - 1] + [n - 1] if n > at[0] else []


def _views(
    model: SpeakerNet, extractor: FeatureExtractor, pieces: list[np.ndarray], chosen: Callable[[int], list[int]]
) -> list[np.ndarray]:
    """Raw embeddings of each piece streamed from its start at the steps `chosen(n_steps)`, batched by length."""
    k = model.config.frame_stack
    order = sorted(range(len(pieces)), key=lambda i: len(pieces[i]))
    out: list[np.ndarray] = [np.zeros((0, model.config.embedding_dim), dtype=np.float32)] * len(pieces)
    with torch.no_grad():
        for start in range(0, len(order), 32):
            group = order[start : start + 32]
            embeddings = model.embed_sequence(extractor.padded([pieces[i] for i in group])).numpy()
            for row, i in enumerate(group):
                n = extractor.params.n_frames(len(pieces[i])) // k
                if n > 0:
                    out[i] = embeddings[row, chosen(n)]
    return out


def step_times(model: SpeakerNet, hop_s: float, first_steps: list[int], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(streams, n) each, for the next n steps of each stream's utterance after its `first_steps`: the seconds of
    it each step has heard and the seconds its embedding rests on (StepScores' speech_s and context_s)."""
    steps = np.asarray(first_steps)[:, None] + np.arange(1, n + 1)
    return steps * model.config.frame_stack * hop_s, model.context_frames(first_steps, n) * hop_s


def step_scores(model: SpeakerNet, extractor: FeatureExtractor, pieces: list[np.ndarray]) -> list[StepScores]:
    """Every step's scores of each piece streamed from its start: what the decider sees. Batched over pieces."""
    k = model.config.frame_stack
    hop_s = extractor.params.hop_s
    lengths = [extractor.params.n_frames(len(piece)) // k for piece in pieces]
    speech_s, context_s = (times[0] for times in step_times(model, hop_s, [0], max(lengths, default=0)))
    out: list[StepScores] = []
    with torch.no_grad():
        for start in range(0, len(pieces), 32):
            output = model.output(model.embed_sequence(extractor.padded(pieces[start : start + 32])))
            for row, n in enumerate(lengths[start : start + 32]):
                out.append(
                    StepScores(
                        scores=output.scores[row, :n].numpy(),
                        probs=output.probs[row, :n].numpy(),
                        speech_s=speech_s[:n],
                        context_s=context_s[:n],
                    )
                )
    return out


def unit_embeddings(model: SpeakerNet, extractor: FeatureExtractor, pieces: list[np.ndarray]) -> np.ndarray:
    """Centred unit embeddings that stand for the voice of `pieces` (see reference_embeddings)."""
    raw = np.concatenate(reference_embeddings(model, extractor, pieces))
    with torch.no_grad():
        return model.unit(torch.from_numpy(raw)).numpy()


CENTROID_CROP_S = 1.5
CENTROID_HOP_S = 0.25


def crops(piece: np.ndarray, crop_s: float = CENTROID_CROP_S, hop_s: float = CENTROID_HOP_S) -> list[np.ndarray]:
    """Overlapping crops: a speaker's centroid from a few dozen short views of its audio is a steadier estimate
    than from two or three disjoint windows (measured: +1 point top-1 on LibriSpeech)."""
    size, hop = int(crop_s * SAMPLE_RATE), int(hop_s * SAMPLE_RATE)
    if len(piece) <= size:
        return [piece]
    return [piece[start : start + size] for start in range(0, len(piece) - size + 1, hop)]
