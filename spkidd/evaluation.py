"""`spkidd evaluate`: accuracy, top-k, per-speaker recall and the confusion matrix on held-out audio, and the
open-set false-accept/false-reject rates (training calibrates its threshold with the same `rates`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spkidd.audio_cache import AudioCache, RowAudio, StoredAudio, opened
from spkidd.dataset import Row
from spkidd.decide import DecisionSettings, final_answer
from spkidd.events import UNKNOWN
from spkidd.features import FeatureExtractor
from spkidd.identify import hear, heard_answer
from spkidd.inference import Progress, Scored, head_samples, score_chunks, score_long, score_prefixes
from spkidd.modelfile import ModelBundle
from spkidd.plots import pyplot

TOP_KS = (1, 3, 5)
EARLY_S = (0.5, 1.0, 2.0)
"""A live stream has to answer before an utterance is over: top-1 from only the first this many seconds."""
DECODED_AT_ONCE = 4
"""Rows decoded (in parallel) before they are scored and let go: all of them at once held every whole recording of a
manifest in memory (an hour is 230 MB: four hour-long rows peaked at 2.0 GB; now eight peak at 1.9 GB). A row longer
than a minute is read from the decode cache a block at a time (audio_cache.StoredAudio), never held whole: four
hour-long rows then peaked at 2.19 GB (1.80 GB from a warm cache), now at 390 MB (377 MB)."""


@dataclass
class Scoring:
    """Per item: the true label index and the model's scores; plus what could not be scored."""

    truth: list[int] = field(default_factory=list)
    scored: list[Scored] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unknown_speakers: dict[str, int] = field(default_factory=dict)
    early: dict[float, list[int]] = field(default_factory=dict)
    """Per prefix length: the top-1 speaker index from the first seconds of each item (whole if shorter)."""
    heard: dict[int, str] = field(default_factory=dict)
    """By item: the name identify gives an item long enough for a timeline (heard_answer, at the model's own
    thresholds); the other items are answered from their scores, as identify answers them."""


def chunk_seconds(bundle: ModelBundle) -> float:
    """Long items are scored in chunks as long as the model's training windows."""
    return float(bundle.training.get("settings", {}).get("window_s", 3.0))


ROW_SHARES = 1024
"""A long row's scoring is told in 1024ths of a row: sums of such fractions are exact in floating point, so that the
scoring bar's count still ends on a whole number of rows (0.1 + 0.2 + 0.7 is not 1.0)."""


@dataclass
class RowProgress:
    """One row's share of the scoring bar: a long row (an hour is 17 s of scoring) moves it chunk by chunk, and the
    rest of the row is told once it is scored (all of it at once for a short or skipped row)."""

    advance: Callable[[float], None] | None
    told: int = 0
    """In ROW_SHARES."""

    def seconds(self, done_s: float, total_s: float | None) -> None:
        if total_s:
            self._tell(min(ROW_SHARES, int(done_s / total_s * ROW_SHARES)))

    def done(self) -> None:
        self._tell(ROW_SHARES)

    def _tell(self, shares: int) -> None:
        if self.advance is not None and shares > self.told:
            self.advance((shares - self.told) / ROW_SHARES)
            self.told = shares


def score_rows(
    bundle: ModelBundle,
    rows: list[Row],
    cache: AudioCache,
    on_progress: Callable[[int], None] | None = None,
    on_scored: Callable[[float], None] | None = None,
) -> Scoring:
    """Decodes (`on_progress` per file) and scores (`on_scored` by rows, a long row's chunks as parts of one) every row
    of a known speaker; the rows of other speakers count as done for both at once, so that neither progress bar ends
    short of its total."""
    index = {label: i for i, label in enumerate(bundle.labels)}
    result = Scoring()
    known = []
    for row in rows:
        if row.speaker in index:
            known.append(row)
        else:
            result.unknown_speakers[row.speaker] = result.unknown_speakers.get(row.speaker, 0) + 1
    if on_progress:
        on_progress(len(rows) - len(known))
    if on_scored:
        on_scored(len(rows) - len(known))
    extractor = bundle.extractor()
    for item in decoded_in_turn(known, cache, on_progress):
        share = RowProgress(on_scored)
        if item.audio is None:
            result.skipped.append(item.reason)
        elif not _score_item(bundle, extractor, item.audio, index[item.row.speaker], result, share.seconds):
            result.skipped.append(item.row.said(f"{item.row.path}: too short to score"))
        share.done()
    return result


@dataclass(frozen=True)
class Decoded:
    """One row's audio (a long row's as StoredAudio), or None and the reason it was skipped."""

    row: Row
    audio: RowAudio | None
    reason: str = ""


def decoded_in_turn(
    rows: list[Row], cache: AudioCache, on_progress: Callable[[int], None] | None = None
) -> Iterator[Decoded]:
    """The rows decoded DECODED_AT_ONCE at a time, in order, each let go of once handed over: memory holds a few
    recordings, not all (a batch still referenced while the next was decoded held twice as many)."""
    for start in range(0, len(rows), DECODED_AT_ONCE):
        batch = opened(rows[start : start + DECODED_AT_ONCE], cache, on_progress=on_progress)
        yield from (Decoded(row, None, row.said(reason)) for row, audio, reason in batch if audio is None)
        kept = [Decoded(row, audio) for row, audio, _ in batch if audio is not None]
        del batch
        while kept:
            yield kept.pop(0)


def scored_row(
    bundle: ModelBundle, audio: RowAudio, extractor: FeatureExtractor, report: Progress | None = None
) -> Scored | None:
    """score_long's answer for a row, a long one (StoredAudio) read from the cache a block at a time."""
    return _scored_chunks(bundle, audio, extractor, report)[0]


def _scored_chunks(
    bundle: ModelBundle, audio: RowAudio, extractor: FeatureExtractor, report: Progress | None = None
) -> tuple[Scored | None, int]:
    chunk_s = chunk_seconds(bundle)
    if isinstance(audio, np.ndarray):
        return score_long(bundle, audio, chunk_s, extractor, report)
    rate = bundle.features.sample_rate
    if not _is_timelined(bundle, audio):
        return score_long(bundle, audio.read(0, audio.samples), chunk_s, extractor, report)
    return score_chunks(bundle, audio.blocks(), chunk_s, extractor, report, audio.samples / rate)


def _is_timelined(bundle: ModelBundle, audio: RowAudio) -> bool:
    """Whether the row is long enough for identify to draw its timeline (score_long cuts it into chunks)."""
    return _samples(audio) > head_samples(chunk_seconds(bundle), bundle.features.sample_rate)


def _score_item(
    bundle: ModelBundle, extractor: FeatureExtractor, audio: RowAudio, truth: int, into: Scoring, report: Progress
) -> bool:
    """The whole item's scores, the name identify gives it, and the top-1 after each of EARLY_S (one causal pass);
    False if too short. A long item is heard first, as identify hears it (HEARING_SHARE of its progress)."""
    timelined = _is_timelined(bundle, audio)
    rate = bundle.features.sample_rate
    total_s = _samples(audio) / rate
    heard = hear(bundle, _told(_blocks(audio), _pass(report, 0, total_s), rate), total_s) if timelined else None
    scored, chunks = _scored_chunks(bundle, audio, extractor, _pass(report, 1, total_s) if timelined else report)
    if scored is None:
        return False
    if heard is not None:
        into.heard[len(into.truth)] = heard_answer(bundle, scored, chunks, heard)
    into.truth.append(truth)
    into.scored.append(scored)
    lengths = [extractor.params.n_frames(int(seconds * rate)) for seconds in EARLY_S]
    prefixes = score_prefixes(bundle, extractor(_head(audio, int(max(EARLY_S) * rate))), lengths)
    for seconds, prefix in zip(EARLY_S, prefixes, strict=True):
        into.early.setdefault(seconds, []).append(int((prefix or scored).probs.argmax()))
    return True


def _samples(audio: RowAudio) -> int:
    return audio.samples if isinstance(audio, StoredAudio) else len(audio)


def _blocks(audio: RowAudio) -> Iterable[np.ndarray]:
    return audio.blocks() if isinstance(audio, StoredAudio) else [audio]


HEARING_SHARE = 0.75
"""Of a long row's progress, the share of the pass that hears it as identify does: it takes about three times as
long as scoring it (identify: 21 of 27 s for 20 minutes of audio)."""
HEARD_STEP_S = 10.0


def _pass(report: Progress, which: int, total_s: float) -> Progress:
    """A long row's first (0: hearing) or second (1: scoring) pass as its share of the row's progress."""
    start, share = (0.0, HEARING_SHARE) if which == 0 else (HEARING_SHARE, 1.0 - HEARING_SHARE)
    return lambda done_s, _: report(total_s * start + done_s * share, total_s)


def _told(blocks: Iterable[np.ndarray], report: Progress, rate: int) -> Iterator[np.ndarray]:
    """The blocks, telling `report` how far the pipeline has taken them in steps of HEARD_STEP_S of audio, whatever
    the blocks' sizes: a row read whole and one read from the cache 10 s at a time tell the same progress."""
    taken = 0
    told = 0.0
    for block in blocks:
        yield block
        taken += len(block)
        while told + HEARD_STEP_S <= taken / rate:
            told += HEARD_STEP_S
            report(told, None)


def _head(audio: RowAudio, samples: int) -> np.ndarray:
    """The row's first `samples` (all of it if shorter)."""
    return audio.read(0, samples) if isinstance(audio, StoredAudio) else audio[:samples]


OUTCOMES = ("named_right", "unknown", "named_wrong")


def answers_at_threshold(bundle: ModelBundle, scoring: Scoring) -> dict[str, float]:
    """What users get from the shipped thresholds (the daemon's final answer): shares of items named right,
    answered `unknown`, and named wrong."""
    return _shares(outcomes_at_threshold(bundle, scoring))


def outcomes_at_threshold(bundle: ModelBundle, scoring: Scoring) -> list[str]:
    """Each item's outcome (one of OUTCOMES) at the shipped thresholds."""
    settings = DecisionSettings.from_model(bundle.decision)
    outcomes = []
    for item, (truth, scored) in enumerate(zip(scoring.truth, scoring.scored, strict=True)):
        if item in scoring.heard:
            name = scoring.heard[item]
            index, named = (bundle.labels.index(name), True) if name != UNKNOWN else (-1, False)
        else:
            last = (scored.scores, scored.probs)
            index, named, _, _ = final_answer(settings, bundle.model.config.scale, last, scored.fallback)
        outcomes.append("unknown" if not named else "named_right" if index == truth else "named_wrong")
    return outcomes


def _shares(outcomes: list[str]) -> dict[str, float]:
    n = max(1, len(outcomes))
    return {outcome: outcomes.count(outcome) / n for outcome in OUTCOMES}


def closed_set_report(bundle: ModelBundle, scoring: Scoring) -> dict[str, Any]:
    labels = bundle.labels
    n_labels = len(labels)
    truth = np.array(scoring.truth, dtype=int)
    if truth.size == 0:
        raise ValueError("nothing to evaluate: no usable item of a speaker the model knows")
    probs = np.stack([s.probs for s in scoring.scored])
    ranking = np.argsort(-probs, axis=1)
    predicted = ranking[:, 0]
    top_k = {str(k): float(np.mean([t in r[:k] for t, r in zip(truth, ranking, strict=True)])) for k in TOP_KS}
    confusion = np.zeros((n_labels, n_labels), dtype=int)
    np.add.at(confusion, (truth, predicted), 1)
    outcomes = outcomes_at_threshold(bundle, scoring)
    per_speaker = {}
    for i, label in enumerate(labels):
        n = int(confusion[i].sum())
        claimed = int(confusion[:, i].sum())
        per_speaker[label] = {
            "n": n,
            "recall": float(confusion[i, i] / n) if n else None,
            "precision": float(confusion[i, i] / claimed) if claimed else None,
            "at_threshold": _shares([o for o, t in zip(outcomes, truth, strict=True) if t == i]) if n else None,
        }
    off_diagonal = [
        {"true": labels[i], "predicted": labels[j], "count": int(confusion[i, j])}
        for i, j in zip(*np.nonzero(confusion), strict=True)
        if i != j
    ]
    off_diagonal.sort(key=lambda c: -int(c["count"]))
    early = {f"{k:g}": float(np.mean(np.array(v) == truth)) for k, v in sorted(scoring.early.items())}
    return {
        "model": bundle.name,
        "accuracy": top_k["1"],
        "top_k": top_k,
        "at_threshold": _shares(outcomes),
        "min_score": float(bundle.decision.get("min_score", float("nan"))),
        "top1_after_s": early,
        "n": int(truth.size),
        "labels": labels,
        "confusion_matrix": confusion.tolist(),
        "per_speaker": per_speaker,
        "top_confusions": off_diagonal[:20],
        "skipped": len(scoring.skipped),
        "skipped_reasons": scoring.skipped[:50],
        "unknown_speakers": scoring.unknown_speakers,
    }


def write_report(report: dict[str, Any], directory: Path) -> None:
    _write(report, directory, "report.json", plot_confusion, "confusion.png")


def _write(
    report: dict[str, Any], directory: Path, name: str, plot: Callable[[dict[str, Any], Path], None], picture: str
) -> None:
    """A report as JSON and as the picture people would rather look at, side by side in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(report, indent=2))
    plot(report, directory / picture)


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    """Row-normalized heat map; labels on the axes when they fit, and the top confusions listed beside it."""
    plt = pyplot()

    labels: list[str] = report["labels"]
    confusion = np.array(report["confusion_matrix"], dtype=float)
    rows = confusion.sum(axis=1, keepdims=True)
    normalized = np.divide(confusion, rows, out=np.zeros_like(confusion), where=rows > 0)
    n = len(labels)
    size = min(14.0, max(6.0, 0.3 * n))
    fig, (ax, side) = plt.subplots(1, 2, figsize=(size + 5, size), gridspec_kw={"width_ratios": [size, 5]})
    image = ax.imshow(normalized, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true speaker's items")
    if n <= 40:
        ax.set_xticks(range(n), labels, rotation=90, fontsize=8)
        ax.set_yticks(range(n), labels, fontsize=8)
        if n <= 12:
            for i in range(n):
                for j in range(n):
                    if confusion[i, j]:
                        color = "black" if normalized[i, j] > 0.5 else "white"
                        ax.text(j, i, int(confusion[i, j]), ha="center", va="center", color=color, fontsize=9)
    ax.set_xlabel("predicted speaker (top-1)" if n <= 40 else "predicted speaker (top-1, index)")
    ax.set_ylabel("true speaker")
    ax.set_title(f"{report['model']}: top-1 {report['accuracy']:.2%} on {report['n']} items")
    side.axis("off")
    shipped = report["at_threshold"]
    lines = [f"At the shipped threshold ({report['min_score']:.3f}):"]
    lines += [f"  named right {shipped['named_right']:.1%}", f"  unknown     {shipped['unknown']:.1%}"]
    lines += [f"  named wrong {shipped['named_wrong']:.1%}", ""]
    lines += ["Top confusions (true -> predicted: count)", ""]
    lines += [f"{c['true']} -> {c['predicted']}: {c['count']}" for c in report["top_confusions"]] or ["none"]
    side.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def rates(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> tuple[float, float]:
    """(false-accept rate, false-reject rate) when scores >= threshold are accepted."""
    far = float(np.mean(impostor >= threshold)) if impostor.size else 0.0
    frr = float(np.mean(genuine < threshold)) if genuine.size else 0.0
    return far, frr


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, threshold at which false accepts and false rejects are closest)."""
    candidates = np.unique(np.concatenate([genuine, impostor]))
    best = (1.0, 0.0, 0.5)
    for threshold in candidates:
        far, frr = rates(genuine, impostor, float(threshold))
        if abs(far - frr) < best[0]:
            best = (abs(far - frr), (far + frr) / 2.0, float(threshold))
    return best[1], best[2]


def open_set_scores(bundle: ModelBundle, items: list[tuple[str, Scored]]) -> tuple[np.ndarray, np.ndarray, list[bool]]:
    """Genuine scores (an enrolled speaker's item against its own reference), stranger scores (a stranger's item
    against its best-matching enrolled speaker), and per genuine item whether the top match was right."""
    index = {label: i for i, label in enumerate(bundle.labels)}
    genuine, stranger, correct = [], [], []
    for speaker, scored in items:
        if speaker in index:
            genuine.append(float(scored.scores[index[speaker]]))
            correct.append(int(scored.probs.argmax()) == index[speaker])
        else:
            stranger.append(float(scored.scores.max()))
    return np.array(genuine), np.array(stranger), correct


def open_set_report(bundle: ModelBundle, items: list[tuple[str, Scored]], held_out: list[str]) -> dict[str, Any]:
    genuine, stranger, correct = open_set_scores(bundle, items)
    if genuine.size == 0 or stranger.size == 0:
        raise ValueError("open-set evaluation needs items of enrolled speakers and of strangers")
    eer, eer_threshold = equal_error_rate(genuine, stranger)
    threshold = bundle.decision.get("min_score", 0.5)
    far, frr = rates(genuine, stranger, threshold)
    accepted_right = [c and g >= threshold for c, g in zip(correct, genuine, strict=True)]
    return {
        "model": bundle.name,
        "enrolled_speakers": len(bundle.labels),
        "strangers": held_out,
        "genuine_items": int(genuine.size),
        "stranger_items": int(stranger.size),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "operating_threshold": threshold,
        "far": far,
        "frr": frr,
        "top1_enrolled": float(np.mean(correct)),
        "identified_and_accepted": float(np.mean(accepted_right)),
        "genuine_scores": genuine.round(4).tolist(),
        "stranger_scores": stranger.round(4).tolist(),
    }


def write_open_set_report(report: dict[str, Any], directory: Path) -> None:
    _write(report, directory, "open_set.json", plot_open_set, "open_set.png")


def plot_open_set(report: dict[str, Any], path: Path) -> None:
    """Score distributions with the operating threshold, and the DET curve (false rejects vs false accepts)."""
    plt = pyplot()

    genuine = np.array(report["genuine_scores"])
    stranger = np.array(report["stranger_scores"])
    fig, (hist, det) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(min(genuine.min(), stranger.min()), 1.0, 50)
    hist.hist(genuine, bins=bins, alpha=0.6, density=True, label=f"enrolled speaker ({genuine.size})")
    hist.hist(stranger, bins=bins, alpha=0.6, density=True, label=f"stranger, best match ({stranger.size})")
    hist.axvline(report["operating_threshold"], color="black", linestyle="--", label="operating threshold")
    hist.set(xlabel="cosine score", ylabel="density", title="score distributions")
    hist.legend()
    thresholds = np.unique(np.concatenate([genuine, stranger]))
    curve = np.array([rates(genuine, stranger, float(t)) for t in thresholds])
    det.loglog(np.maximum(curve[:, 0], 1e-4), np.maximum(curve[:, 1], 1e-4), color="tab:blue")
    det.plot([report["far"] or 1e-4], [report["frr"] or 1e-4], "ko", label="operating point")
    det.plot([report["eer"]], [report["eer"]], "rs", label=f"EER {report['eer']:.2%}")
    det.set(xlabel="false-accept rate", ylabel="false-reject rate", title="DET curve")
    det.grid(True, which="both", alpha=0.3)
    det.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def score_items(
    bundle: ModelBundle,
    rows: list[Row],
    cache: AudioCache,
    on_progress: Callable[[int], None] | None = None,
    on_scored: Callable[[float], None] | None = None,
) -> tuple[list[tuple[str, Scored]], list[str]]:
    """(speaker, scores) of every usable row, whether or not the model knows the speaker; and the rows skipped,
    with the reason. Progress as score_rows tells it."""
    skipped: list[str] = []
    extractor = bundle.extractor()
    items = []
    for item in decoded_in_turn(rows, cache, on_progress):
        share = RowProgress(on_scored)
        scored = None if item.audio is None else scored_row(bundle, item.audio, extractor, share.seconds)
        share.done()
        if item.audio is None:
            skipped.append(item.reason)
        elif scored is None:
            skipped.append(item.row.said(f"{item.row.path}: too short to score"))
        else:
            items.append((item.row.speaker, scored))
    return items, skipped


def hold_out(bundle: ModelBundle, speakers: list[str]) -> ModelBundle:
    """The model without `speakers`, so their voices become strangers to it."""
    from spkidd.enrollment import forget

    for speaker in speakers:
        bundle = forget(bundle, speaker)
    return bundle
