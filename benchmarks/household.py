"""A household's training time: "a household ... with five minutes of speech trains in about a minute" (issue 9).

    python benchmarks/household.py [--minutes 5] [--data ../shared/data] [--out benchmarks/out] [--train=OPTIONS]

The household is FSDD's six speakers (the only set of the shared data with minutes of every voice; LibriSpeech-251
has one utterance per speaker): P1's training clips of each speaker in order of their index, until the household
has MINUTES of sound in all, equally shared. `spkidd train` with default flags is timed end to end (the process,
imports included, as a user waits for it), then the model is evaluated on P1's test clips. Writes
OUT/household.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import soundfile as sf
from evaluation import evaluate, timed_train
from manifests import DEFAULT_DATA, p1, write_manifest


def household_manifest(train_csv: Path, minutes: float, out: Path) -> tuple[Path, int, float]:
    """The first clips of every speaker (by index) up to an equal share of `minutes`: the manifest, the number of
    speakers and the seconds of sound."""
    with train_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    by_speaker: dict[str, list[str]] = {}
    for row in rows:
        by_speaker.setdefault(row["speaker"], []).append(row["path"])
    share_s = 60.0 * minutes / len(by_speaker)
    chosen: list[tuple[object, ...]] = []
    total_s = 0.0
    for speaker, paths in sorted(by_speaker.items()):
        taken_s = 0.0
        for path in sorted(paths, key=lambda p: int(Path(p).stem.split("_")[2])):
            if taken_s >= share_s:
                break
            taken_s += sf.info(path).duration
            chosen.append((path, speaker))
        total_s += taken_s
    return write_manifest(out / "household_train.csv", ["path", "speaker"], chosen), len(by_speaker), total_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--train", default="", help="extra `spkidd train` options")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no benchmark data at {args.data} (pass --data)")
    work = args.out / "household"
    train_csv, test_csv = p1(args.data, work)
    manifest, speakers, sound_s = household_manifest(train_csv, args.minutes, work)
    model = work / "household.safetensors"
    train_s = timed_train(manifest, model, args.train)
    _, figures = evaluate(model, test_csv, work / "report", quiet=True)
    result = {"speakers": speakers, "sound_min": round(sound_s / 60, 2), "train_wall_s": round(train_s, 1), **figures}
    (args.out / "household.json").write_text(json.dumps(result, indent=2))
    print(f"\nhousehold of {speakers} with {sound_s / 60:.1f} min of sound: trained in {train_s:.0f} s (whole command)")
    answers = f"{figures['named_right']:.1%} / {figures['unknown']:.1%} / {figures['named_wrong']:.1%}"
    print(f"  on P1's {figures['test_items']} test clips: top-1 {figures['top1']:.2%}; named right / unknown / wrong")
    print(f"  at the shipped threshold {answers}")


if __name__ == "__main__":
    main()
