"""Small households' unknown-speaker threshold: which calibration policy keeps strangers out, on development data.

    nice -n 10 python benchmarks/small_households.py [--data ../shared/data] [--out benchmarks/out] [--seed 0]
        [--librispeech 6] [--fsdd 6] [--large 40]

Training parts only (P2's and P1's), never a test split. Households are trained once each with default
`spkidd train` flags; the scores the training calibrated its threshold on are kept (the same model, references and
windows), so every policy's threshold comes from the same scores, and each is tried on the same scored windows:
- LibriSpeech: households of 6 speakers (seeded, disjoint) trained on the first 70% of each member's P2 training
  part; held out: the rest of those parts in 2-s windows; strangers: the whole training parts of 30 other speakers
  in 2-s windows (a TV). One larger household (`--large` speakers) shows what a policy does to a big model.
- FSDD: households of 4 of its 6 speakers (seeded combinations) trained on 70% of their P1 training clips (seeded);
  held out: the other 30%; strangers: the other 2 speakers' P1 training clips, and the LibriSpeech strangers.
FRR: held-out windows answered `unknown` or named wrong; FAR: strangers named as anybody; both through the daemon's
final answer at each policy's threshold. LibriSpeech's held-out windows are few (3-6 a household: 28 in all), FSDD's
are 540 a household. `shipped` is the model's own threshold: policy d for households below
train.calibrate.SMALL_HOUSEHOLD voices, a for larger ones. About 7 minutes on 2 cores. Writes
OUT/small_households/summary.json.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
from manifests import DEFAULT_DATA, MANIFEST_HEADER, p1, p2, split_span, write_manifest
from rich.console import Console

from spkidd.audio_cache import AudioCache, default_cache_dir
from spkidd.dataset import read_manifest
from spkidd.evaluation import Scoring, answers_at_threshold, score_items
from spkidd.modelfile import ModelBundle, load_model
from train.calibrate import DEFAULT_THRESHOLD, calibrate_threshold, small_household_threshold
from train.fit import TrainSettings, pseudo_strangers
from train.fit_head import HeadTrainer
from train.run import TrainInputs, run_training
from train.trainer_base import Calibrated

TRAIN_SHARE = 0.7
STRANGER_SPEAKERS = 30
LIBRISPEECH_SIZE = 6
FSDD_SIZE = 4
ALL_VOICES_FAR_AT = 20
"""Policy e: the target false-accept rate scaled down by how few impostor voices a household has, reaching the
configured target at this many."""


@dataclass
class Household:
    """What one household is trained on, what of its own voices is held out, and the strangers it meets."""

    name: str
    train: list[tuple[object, ...]]
    held_out: list[tuple[object, ...]]
    strangers: dict[str, list[tuple[object, ...]]]


@dataclass
class CalibrationScores:
    """What the training calibrated on: held-out windows' genuine and best-other-voice scores, the speed-changed
    voices' best-other scores (only computed by training when nothing is held out), and the threshold it shipped."""

    genuine: np.ndarray
    others: np.ndarray
    speed_changed: np.ndarray
    target_far: float
    speakers: int
    shipped: float


def librispeech_households(
    train_csv: Path, count: int, large: int, rng: np.random.Generator
) -> tuple[list[Household], list[tuple[object, ...]]]:
    """`count` disjoint households of LIBRISPEECH_SIZE and one of `large` speakers, and the strangers' windows."""
    with train_csv.open() as handle:
        rows = {r["speaker"]: r for r in csv.DictReader(handle)}
    speakers = list(rng.permutation(sorted(rows)))
    strangers = [w for s in speakers[:STRANGER_SPEAKERS] for w in _windows(rows[s], 0.0)[1]]
    rest = speakers[STRANGER_SPEAKERS:]
    groups = [rest[i * LIBRISPEECH_SIZE : (i + 1) * LIBRISPEECH_SIZE] for i in range(count)]
    groups.append(rest[-large:])
    households = []
    for group in groups:
        parts = [_windows(rows[s], TRAIN_SHARE) for s in group]
        name = f"librispeech-{len(group)}-{group[0]}"
        households.append(Household(name, [p[0] for p in parts], [w for p in parts for w in p[1]], {}))
    for household in households:
        household.strangers["librispeech"] = strangers
    return households, strangers


def _windows(row: dict[str, str], share: float) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
    return split_span(row["path"], row["speaker"], float(row["start"]), float(row["end"]), share)


def fsdd_households(
    train_csv: Path, count: int, tv: list[tuple[object, ...]], rng: np.random.Generator
) -> list[Household]:
    """`count` seeded combinations of FSDD_SIZE speakers, each speaker's clips split TRAIN_SHARE / rest at random."""
    by_speaker: dict[str, list[tuple[object, ...]]] = {}
    with train_csv.open() as handle:
        for r in csv.DictReader(handle):
            by_speaker.setdefault(r["speaker"], []).append((r["path"], r["speaker"]))
    combinations = list(itertools.combinations(sorted(by_speaker), FSDD_SIZE))
    chosen = rng.choice(len(combinations), size=count, replace=False)
    households = []
    for group in (combinations[i] for i in sorted(chosen)):
        train, held_out = [], []
        for speaker in group:
            clips = list(rng.permutation(len(by_speaker[speaker])))
            cut = round(TRAIN_SHARE * len(clips))
            train += [by_speaker[speaker][i] for i in sorted(clips[:cut])]
            held_out += [by_speaker[speaker][i] for i in sorted(clips[cut:])]
        others = [clip for speaker in sorted(set(by_speaker) - set(group)) for clip in by_speaker[speaker]]
        strangers = {"fsdd": others, "librispeech": tv}
        households.append(Household("fsdd-" + "-".join(group), train, held_out, strangers))
    return households


def _manifest(path: Path, rows: list[tuple[object, ...]]) -> Path:
    """Rows of (path, speaker) or (path, speaker, start, end) as a manifest."""
    return write_manifest(path, MANIFEST_HEADER[: len(rows[0])], rows)


@contextmanager
def recorded_calibration(into: list[CalibrationScores]) -> Iterator[None]:
    """Training as it is, with the scores its calibration rests on kept: HeadTrainer._calibrate's own window scores
    at the moment it calibrates (references of the training part only), plus the speed-changed voices'."""
    original = HeadTrainer._calibrate

    def recording(self: HeadTrainer, model: Any, settings: TrainSettings) -> Calibrated:
        s = self.split
        held_out = self._window_scores(model, s.val_audio, s.val_labels, settings.window_s)
        changed = self._window_scores(model, *pseudo_strangers(s), settings.window_s)
        calibrated = original(self, model, settings)
        shipped = float(calibrated.decision["min_score"])
        scores = CalibrationScores(
            held_out.genuine, held_out.impostor, changed.impostor, settings.target_far, len(self.labels), shipped
        )
        into.append(scores)
        return calibrated

    with mock.patch.object(HeadTrainer, "_calibrate", recording):
        yield


def train(household: Household, work: Path, cache_dir: Path) -> tuple[ModelBundle, CalibrationScores, float]:
    """The household's model with default settings (the log in WORK/NAME.log), its calibration scores and the
    training's wall time."""
    manifest = _manifest(work / f"{household.name}_train.csv", household.train)
    model = work / f"{household.name}.safetensors"
    recorded: list[CalibrationScores] = []
    started = time.monotonic()
    with (work / f"{household.name}.log").open("w") as log, recorded_calibration(recorded):
        code = run_training(TrainInputs(manifest, model, cache_dir=cache_dir), TrainSettings(), Console(file=log))
    if code != 0:
        raise RuntimeError(f"training {household.name} failed ({code}): see its log")
    return load_model(model), recorded[0], time.monotonic() - started


def policies(c: CalibrationScores) -> dict[str, float]:
    """Every policy's threshold from the same calibration scores, beside the one training shipped: a, the other
    voices' held-out speech (speed-changed voices without it), as training did before; b, a at least the default;
    c, a on the other voices and the speed-changed ones pooled; d, train.calibrate.small_household_threshold; e, a
    at a target false-accept rate scaled by the number of other voices (ALL_VOICES_FAR_AT)."""
    others = c.others if c.others.size else c.speed_changed
    current = calibrate_threshold(c.genuine, others, c.target_far)[0]
    both = np.concatenate([c.others, c.speed_changed])
    fewer_voices_far = c.target_far * min(1.0, (c.speakers - 1) / (ALL_VOICES_FAR_AT - 1))
    return {
        "shipped": c.shipped,
        "a others": current,
        "b floor 0.5": max(current, DEFAULT_THRESHOLD),
        "c others+speed": calibrate_threshold(c.genuine, both, c.target_far)[0],
        "d stricter, <= 0.5": small_household_threshold(c.genuine, others, c.speed_changed, c.target_far)[0],
        "e FAR by voices": calibrate_threshold(c.genuine, others, fewer_voices_far)[0],
    }


def scored(bundle: ModelBundle, rows: list[tuple[object, ...]], path: Path, cache: AudioCache) -> Scoring:
    """The rows scored by the model; a speaker it does not know gets the truth -1, which no answer names right."""
    items, skipped = score_items(bundle, read_manifest(_manifest(path, rows)), cache)
    if skipped:
        raise RuntimeError(f"{len(skipped)} rows skipped, e.g. {skipped[0]}")
    index = {label: i for i, label in enumerate(bundle.labels)}
    return Scoring(truth=[index.get(s, -1) for s, _ in items], scored=[s for _, s in items])


def named(bundle: ModelBundle, scoring: Scoring, threshold: float) -> dict[str, float]:
    """The daemon's final answers at `threshold`: shares named right, unknown, named wrong."""
    return answers_at_threshold(replace(bundle, decision={**bundle.decision, "min_score": threshold}), scoring)


def measure(household: Household, work: Path, cache_dir: Path) -> dict[str, Any]:
    """One household trained, its windows scored, and every policy's threshold, FRR and FARs."""
    bundle, calibration, train_s = train(household, work, cache_dir)
    cache = AudioCache(cache_dir)
    own = scored(bundle, household.held_out, work / f"{household.name}_held_out.csv", cache)
    strangers = {
        kind: scored(bundle, rows, work / f"{household.name}_{kind}.csv", cache)
        for kind, rows in household.strangers.items()
    }
    result: dict[str, Any] = {
        "speakers": calibration.speakers,
        "train_s": round(train_s, 1),
        "held_out": len(own.truth),
        "strangers": {kind: len(s.truth) for kind, s in strangers.items()},
        "calibrated_on": {"others": int(calibration.others.size), "speed": int(calibration.speed_changed.size)},
        "policies": {},
    }
    for policy, threshold in policies(calibration).items():
        figures = {"threshold": round(threshold, 4), "frr": 1.0 - named(bundle, own, threshold)["named_right"]}
        for kind, scoring in strangers.items():
            figures[f"far {kind}"] = 1.0 - named(bundle, scoring, threshold)["unknown"]
        result["policies"][policy] = figures
    return result


def _table(results: dict[str, dict[str, Any]], prefix: str) -> list[str]:
    """Per policy: mean (min-max) over the households whose name starts with `prefix` of every figure."""
    chosen = [r for name, r in results.items() if name.startswith(prefix)]
    lines = [f"{prefix} households: {len(chosen)}"]
    for policy in chosen[0]["policies"]:
        cells = []
        for figure in chosen[0]["policies"][policy]:
            values = np.array([r["policies"][policy][figure] for r in chosen])
            scale = 1 if figure == "threshold" else 100
            cells.append(
                f"{figure} {scale * values.mean():.2f} ({scale * values.min():.2f}-{scale * values.max():.2f})"
            )
        lines.append(f"  {policy:22s} " + "; ".join(cells))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--librispeech", type=int, default=6, help="LibriSpeech households of 6 speakers")
    parser.add_argument("--fsdd", type=int, default=6, help="FSDD households of 4 speakers")
    parser.add_argument("--large", type=int, default=40, help="speakers of the one larger LibriSpeech household")
    args = parser.parse_args()
    started = time.monotonic()
    work: Path = args.out / "small_households"
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    p2_train, _ = p2(args.data, work / "p2")
    p1_train, _ = p1(args.data, work / "p1")
    households, tv = librispeech_households(p2_train, args.librispeech, args.large, rng)
    households += fsdd_households(p1_train, args.fsdd, tv, rng)
    cache_dir = default_cache_dir()
    results = {}
    for household in households:
        print(f"{household.name}: training on {len(household.train)} rows", flush=True)
        results[household.name] = measure(household, work, cache_dir)
        print(json.dumps(results[household.name]["policies"]), flush=True)
    lines = [
        *_table(results, f"librispeech-{LIBRISPEECH_SIZE}-"),
        *_table(results, f"librispeech-{args.large}-"),
        *_table(results, "fsdd-"),
    ]
    print("\n".join(lines))
    summary = {"seed": args.seed, "wall_s": round(time.monotonic() - started, 1), "households": results}
    (work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wall time {summary['wall_s']:.0f} s; {work / 'summary.json'}")


if __name__ == "__main__":
    main()
