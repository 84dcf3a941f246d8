"""`spkidd evaluate`: accuracy, top-k, per-speaker recall and the confusion matrix on held-out audio."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spkidd.inference import Scored, score_long
from spkidd.modelfile import ModelBundle
from train.data import Row
from train.prepare import AudioCache, prepare

TOP_KS = (1, 3, 5)


@dataclass
class Scoring:
    """Per item: the true label index and the model's scores; plus what could not be scored."""

    truth: list[int] = field(default_factory=list)
    scored: list[Scored] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unknown_speakers: dict[str, int] = field(default_factory=dict)


def chunk_seconds(bundle: ModelBundle) -> float:
    """Long items are scored in chunks as long as the model's training windows."""
    return float(bundle.training.get("settings", {}).get("window_s", 3.0))


def score_rows(
    bundle: ModelBundle, rows: list[Row], cache: AudioCache, on_progress: Callable[[int], None] | None = None
) -> Scoring:
    index = {label: i for i, label in enumerate(bundle.labels)}
    result = Scoring()
    known = []
    for row in rows:
        if row.speaker in index:
            known.append(row)
        else:
            result.unknown_speakers[row.speaker] = result.unknown_speakers.get(row.speaker, 0) + 1
    prepared = prepare(known, cache, on_progress=on_progress)
    result.skipped = [reason for _, reason in prepared.skipped]
    extractor = bundle.extractor()
    chunk_s = chunk_seconds(bundle)
    for row, audio in zip(prepared.rows, prepared.audio, strict=True):
        scored, _ = score_long(bundle, audio, chunk_s, extractor)
        if scored is None:
            result.skipped.append(f"{row.path}: too short to score")
            continue
        result.truth.append(index[row.speaker])
        result.scored.append(scored)
    return result


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
    per_speaker = {}
    for i, label in enumerate(labels):
        n = int(confusion[i].sum())
        claimed = int(confusion[:, i].sum())
        per_speaker[label] = {
            "n": n,
            "recall": float(confusion[i, i] / n) if n else None,
            "precision": float(confusion[i, i] / claimed) if claimed else None,
        }
    off_diagonal = [
        {"true": labels[i], "predicted": labels[j], "count": int(confusion[i, j])}
        for i, j in zip(*np.nonzero(confusion), strict=True)
        if i != j
    ]
    off_diagonal.sort(key=lambda c: -int(c["count"]))
    return {
        "model": bundle.name,
        "accuracy": top_k["1"],
        "top_k": top_k,
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
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2))
    plot_confusion(report, directory / "confusion.png")


def plot_confusion(report: dict[str, Any], path: Path) -> None:
    """Row-normalized heat map; labels on the axes when they fit, and the top confusions listed beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    else:
        ax.set_xlabel("predicted speaker (index)")
    ax.set_ylabel("true speaker")
    ax.set_title(f"{report['model']}: top-1 {report['accuracy']:.2%} on {report['n']} items")
    side.axis("off")
    lines = ["Top confusions (true -> predicted: count)", ""]
    lines += [f"{c['true']} -> {c['predicted']}: {c['count']}" for c in report["top_confusions"]] or ["none"]
    side.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
