"""Enrollment's check for clips that hold more than one voice, on development data: how often it warns wrongly about
one voice's speech, and how often it catches two or three voices joined in one clip.

    nice -n 10 python benchmarks/enroll_voices.py [--data ../shared/data] [--out benchmarks/out] [--count 40]

Training parts only (P2's and P1's manifests), never a test split:
- LibriSpeech: one voice is a speaker's P2 training part (all a speaker has there: 4-10 s, median 8.5 s, of the
  speakers with 4 s or more), and the same cut to its first 5 s; two and three voices are such parts of seeded
  random speakers joined back to back. With P2's model (every voice trained) and E1's model of 200 voices
  (OUT/e1/e1_200.safetensors, when present) on the 51 voices it never heard, strangers as a new household member is.
- FSDD with P1's model: one voice is 40 of a speaker's P1 training digits joined with 0.2 s of silence (about
  23 s of speech); two and three voices are 20 + 20 and 13 + 13 + 13 digits of different speakers.
For each enrollment spkidd.enrollment's check (split_voices, two_voices) is run on embed_clips' views: `warned` is
the shipped rule; `warned_below` the same rule with other scores as the line between one voice and two, the model's
own threshold among them. About 8 minutes on 2 cores. Writes OUT/enroll_voices.json.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from common import load_span
from e1_enroll import N_NEW
from manifests import DEFAULT_DATA, p1, p2

from spkidd import SAMPLE_RATE
from spkidd.dataset import read_manifest
from spkidd.enrollment import VoiceSplit, embed_clips, split_voices, two_voices
from spkidd.modelfile import ModelBundle, load_model

SHORT_S = 5.0
MIN_PART_S = 4.0
DIGITS = 40
DIGIT_GAP_S = 0.2


@dataclass
class Enrollment:
    kind: str
    voices: tuple[str, ...]
    audio: np.ndarray


def librispeech(data: Path, out: Path) -> dict[str, np.ndarray]:
    """Each speaker's P2 training part, 16-kHz float32."""
    train_csv, _ = p2(data, out / "p2")
    return {row.speaker: load_span(str(row.path), row.start, row.end or 0.0) for row in read_manifest(train_csv)}


def fsdd(data: Path, out: Path) -> dict[str, list[np.ndarray]]:
    """Each speaker's P1 training digits, 16-kHz float32."""
    train_csv, _ = p1(data, out / "p1")
    digits: dict[str, list[np.ndarray]] = {}
    for row in read_manifest(train_csv):
        digits.setdefault(row.speaker, []).append(load_span(str(row.path), 0.0, sf.info(str(row.path)).duration))
    return digits


def librispeech_set(parts: dict[str, np.ndarray], voices: list[str], count: int, seed: int) -> list[Enrollment]:
    """Enrollments of `voices` whose training parts hold MIN_PART_S or more."""
    rng = np.random.default_rng(seed)
    voices = [v for v in voices if len(parts[v]) >= MIN_PART_S * SAMPLE_RATE]
    singles = [str(v) for v in rng.permutation(voices)[:count]]
    out = [Enrollment("1 voice", (v,), parts[v]) for v in singles]
    out += [Enrollment(f"1 voice, {SHORT_S:g} s", (v,), parts[v][: int(SHORT_S * SAMPLE_RATE)]) for v in singles]
    for k in (2, 3):
        for _ in range(count):
            chosen = tuple(str(v) for v in rng.choice(voices, k, replace=False))
            out.append(Enrollment(f"{k} voices", chosen, np.concatenate([parts[v] for v in chosen])))
    return out


def fsdd_set(digits: dict[str, list[np.ndarray]], count: int, seed: int) -> list[Enrollment]:
    rng = np.random.default_rng(seed)
    gap = np.zeros(int(DIGIT_GAP_S * SAMPLE_RATE), dtype=np.float32)
    speakers = sorted(digits)

    def joined(chosen: tuple[str, ...]) -> np.ndarray:
        each = DIGITS // len(chosen)
        picked = [digits[v][i] for v in chosen for i in rng.choice(len(digits[v]), each, replace=False)]
        return np.concatenate([x for clip in picked for x in (clip, gap)])

    out = []
    for k in (1, 2, 3):
        for _ in range(count):
            chosen = tuple(str(v) for v in rng.choice(speakers, k, replace=False))
            out.append(Enrollment("1 voice" if k == 1 else f"{k} voices", chosen, joined(chosen)))
    return out


def measure(bundle: ModelBundle, enrollments: list[Enrollment]) -> dict[str, dict[str, object]]:
    """Per kind: the share of enrollments warned by the shipped rule and with other lines, and the split scores."""
    lines = {f"{x:g}": x for x in (0.4, 0.5, 0.6)} | {"min_score": float(bundle.decision["min_score"])}
    rows: dict[str, list[tuple[VoiceSplit | None, float]]] = {}
    for enrollment in enrollments:
        units, _, speech_s = embed_clips(bundle, {"clip": enrollment.audio})
        rows.setdefault(enrollment.kind, []).append((split_voices(bundle, units, speech_s), speech_s))
    summary: dict[str, dict[str, object]] = {}
    for kind, got in rows.items():
        splits = [split for split, _ in got]
        scores = [split.score if split else 1.0 for split in splits]
        summary[kind] = {
            "enrollments": len(got),
            "warned": _share([split is not None and two_voices(split) for split in splits]),
            "warned_below": {
                name: _share([split is not None and two_voices(split, line) for split in splits])
                for name, line in lines.items()
            },
            "split_score_p10_p50_p90": [round(float(x), 3) for x in np.percentile(scores, [10, 50, 90])],
            "speech_s_median": round(float(np.median([speech_s for _, speech_s in got])), 1),
        }
    return summary


def _share(flags: list[bool]) -> float:
    return round(float(np.mean(flags)), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--count", type=int, default=40, help="enrollments of each kind")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    parts = librispeech(args.data, args.out)
    ids = sorted(parts, key=int)
    never_heard = ids[-N_NEW:]
    cases: list[tuple[str, Path, Callable[[], list[Enrollment]]]] = [
        (
            "p2 (trained voices)",
            args.out / "p2.safetensors",
            lambda: librispeech_set(parts, ids, args.count, args.seed),
        ),
        (
            f"e1_200 ({N_NEW} voices never heard)",
            args.out / "e1" / "e1_200.safetensors",
            lambda: librispeech_set(parts, never_heard, args.count, args.seed),
        ),
        ("p1 (FSDD)", args.out / "p1.safetensors", lambda: fsdd_set(fsdd(args.data, args.out), args.count, args.seed)),
    ]
    figures = {}
    for name, model_path, build in cases:
        if not model_path.is_file():
            print(f"{name}: no {model_path}, skipped")
            continue
        bundle = load_model(model_path)
        figures[name] = {"min_score": round(float(bundle.decision["min_score"]), 3), **measure(bundle, build())}
        print(name, json.dumps(figures[name], indent=2), flush=True)
    (args.out / "enroll_voices.json").write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
