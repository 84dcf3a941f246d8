"""P2N (BENCHMARKS.md): P2's model on P2's test windows taken from copies of the files with pink noise added.

    python benchmarks/p2n_noise.py [MODEL] [--snr 20 10] [--data ../shared/data] [--out benchmarks/out]

MODEL defaults to the P2 model that `run_closed_set.py p2` leaves in OUT. The noisy copies are made once with
../shared/tools/degrade.sh (sox) into OUT/p2n/noise-SNR-repeatable and reused. Prints a table and writes
OUT/p2n.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from evaluation import evaluate
from manifests import DEFAULT_DATA, p2

GOALS = {"20": {"top1": 0.95}, "10": {"top1": 0.80}}


def noisy_copies(data: Path, out: Path, snr: int) -> Path:
    """The copies with noise at `snr` dB. sox runs in its repeatable mode (`-R`, through SOX_OPTS): its pink noise
    and dither are otherwise drawn anew on every machine, and P2N's figures moved by up to four windows between
    two clones of the same code."""
    folder = out / f"noise-{snr}-repeatable"
    done = folder / ".complete"
    if not done.is_file():
        script = data.parent / "tools" / "degrade.sh"
        env = {**os.environ, "SOX_OPTS": f"{os.environ.get('SOX_OPTS', '')} -R".strip()}
        command = ["bash", str(script), str(data / "librispeech-251"), str(folder), "noise", str(snr)]
        subprocess.run(command, check=True, env=env)
        done.write_text("ok\n")
    return folder


def swapped_manifest(test_csv: Path, folder: Path, target: Path) -> Path:
    """P2's test windows (same start/end), paths swapped to the degraded WAV copies."""
    with test_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    with target.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "speaker", "start", "end"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "path": str(folder / (Path(row["path"]).stem + ".wav"))})
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--snr", type=int, nargs="+", default=[20, 10])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    model = args.model or args.out / "p2.safetensors"
    if not model.is_file():
        sys.exit(f"no model at {model}: run benchmarks/run_closed_set.py p2 first, or pass one")
    work = args.out / "p2n"
    work.mkdir(parents=True, exist_ok=True)
    _, test_csv = p2(args.data, work / "manifests")
    figures: dict[str, dict[str, float]] = {}
    for snr in args.snr:
        manifest = swapped_manifest(test_csv, noisy_copies(args.data, work, snr), work / f"test-{snr}.csv")
        figures[str(snr)] = evaluate(model, manifest, work / f"report-{snr}")[1]
    (args.out / "p2n.json").write_text(json.dumps({"model": str(model), "snr_db": figures, "goals": GOALS}, indent=2))
    print("\nP2N results (pink noise)")
    for snr, values in figures.items():
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items())
        print(f"  {snr:>3} dB SNR: {shown}")
    print(f"  goals: {GOALS}")


if __name__ == "__main__":
    main()
