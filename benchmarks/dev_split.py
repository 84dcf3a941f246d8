"""A development split, for choosing between variants without touching a test split.

    python benchmarks/dev_split.py [--train="OPTIONS"] [--seeds 0 1] [--tag NAME] [--data ..] [--out benchmarks/out]

P2's *training* parts only: a model is trained (`spkidd train` with OPTIONS, once per seed) on the first 70% of
every speaker's part and evaluated on the 2-s windows of the other 30%, as recorded and with P2N's pink noise at 20
and 10 dB SNR: top-1 after 0.5, 1 and 2 s, and `unknown` at the shipped threshold. Each seed's figures are printed
beside the mean: on these 193 windows the default training's two seeds were 1.1 / 1.1 / 3.7 points apart in quiet
and up to 5.1 in noise (2026-11-26), so a variant is better only when it is better by more than that.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from evaluation import evaluate, timed_train
from manifests import DEFAULT_DATA, MANIFEST_HEADER, p2, split_span, write_manifest
from p2n_noise import noisy_copies, swapped_manifest

TRAIN_SHARE = 0.7
CONDITIONS = ("quiet", "20 dB", "10 dB")
FIGURES = ("0.5 s", "1 s", "2 s", "unknown")


def development_split(train_csv: Path, out: Path) -> tuple[Path, Path]:
    """(training manifest, development windows) from P2's training manifest, cut at 70% of every part."""
    with train_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    spans = [split_span(r["path"], r["speaker"], float(r["start"]), float(r["end"]), TRAIN_SHARE) for r in rows]
    out.mkdir(parents=True, exist_ok=True)
    return (
        write_manifest(out / "dev_train.csv", MANIFEST_HEADER, [row for row, _ in spans]),
        write_manifest(out / "dev_windows.csv", MANIFEST_HEADER, [w for _, windows in spans for w in windows]),
    )


def figures_of(report: dict[str, Any]) -> dict[str, float]:
    after, answers = report["top1_after_s"], report["at_threshold"]
    return {"0.5 s": after["0.5"], "1 s": after["1"], "2 s": after["2"], "unknown": answers["unknown"]}


def _percent(values: Iterable[float]) -> str:
    return " / ".join(f"{100 * v:.1f}" for v in values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="", help="extra `spkidd train` options, e.g. --train='--head-hidden 64'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tag", default="default", help="name of the variant, for the output files")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    work = args.out / "dev"
    train_csv, _ = p2(args.data, work / "manifests")
    dev_train, dev_windows = development_split(train_csv, work)
    print(f"development windows: {sum(1 for _ in dev_windows.open()) - 1} (manifests in {work})", flush=True)
    manifests = {"quiet": dev_windows}
    for snr in (20, 10):
        folder = noisy_copies(args.data, args.out / "p2n", snr)
        manifests[f"{snr} dB"] = swapped_manifest(dev_windows, folder, work / f"dev_windows-{snr}.csv")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for seed in args.seeds:
        model = work / f"{args.tag}_seed{seed}.safetensors"
        log = work / f"{args.tag}_seed{seed}.log"
        print(f"training {model.name} (log: {log})", flush=True)
        train_s = timed_train(dev_train, model, f"--seed {seed} {args.train}", log=log)
        print(f"  trained in {train_s:.0f} s", flush=True)
        results[str(seed)] = {
            condition: figures_of(evaluate(model, manifest, work / f"{args.tag}_seed{seed}_{condition[:2]}", True)[0])
            for condition, manifest in manifests.items()
        }

    print(
        f"\ndevelopment split, variant {args.tag!r} ({args.train or 'default flags'}): top-1 after 0.5 / 1 / 2 s, "
        "unknown at the threshold (%)"
    )
    for condition in CONDITIONS:
        per_seed = {seed: [figures[condition][f] for f in FIGURES] for seed, figures in results.items()}
        mean = np.mean(list(per_seed.values()), axis=0)
        seeds = "  ".join(f"seed {seed}: {_percent(row)}" for seed, row in per_seed.items())
        print(f"  {condition:<6} mean {_percent(mean)}   ({seeds})")
    (work / f"{args.tag}.json").write_text(json.dumps({"train_options": args.train, "seeds": results}, indent=2))


if __name__ == "__main__":
    main()
