"""P1 and P2 of ../shared/BENCHMARKS.md: `spkidd train` with no flags, then `spkidd evaluate` on the test split.

    python benchmarks/run_closed_set.py p1|p2 [--data ../shared/data] [--out benchmarks/out] [--train=OPTIONS]
        [--torchrun N]

Prints a table and writes OUT/<protocol>.json. The model is kept at OUT/<protocol>.safetensors.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from evaluation import evaluate, timed_train
from manifests import DEFAULT_DATA, p1, p2

GOALS = {
    "p1": {"top1": 1.0, "train_s": 60},
    "p2": {"top1": 0.99, "top5": 0.998, "top1_0.5s": 0.75, "top1_1s": 0.92, "unknown": 0.03, "train_s": 300},
}


def torchrun(processes: int) -> list[str]:
    """`spkidd` in `processes` processes on this machine (DDP; each gets cores // processes threads)."""
    launcher = Path(sys.executable).with_name("torchrun")
    return [str(launcher), "--standalone", f"--nproc-per-node={processes}", "-m", "spkidd"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("protocol", choices=["p1", "p2"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--train", default="", help="extra `spkidd train` options, e.g. --train='--encoder none'")
    parser.add_argument("--torchrun", type=int, default=1, metavar="N", help="train in N processes under torchrun")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no benchmark data at {args.data} (pass --data)")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = (p1 if args.protocol == "p1" else p2)(args.data, out / args.protocol)
    model = out / f"{args.protocol}.safetensors"
    launcher = None if args.torchrun == 1 else torchrun(args.torchrun)
    train_s = timed_train(train_csv, model, args.train, launcher)
    report, shared = evaluate(model, test_csv, out / f"{args.protocol}_report")
    from spkidd.modelfile import load_model

    figures = {
        "protocol": args.protocol,
        **shared,
        "skipped": report["skipped"],
        "top3": report["top_k"]["3"],
        "top1_0.5s": report["top1_after_s"]["0.5"],
        "top1_1s": report["top1_after_s"]["1"],
        "min_score": report["min_score"],
        "train_wall_s": round(train_s, 1),
        "epochs_run": load_model(model).training["epochs_run"],
        "train_processes": args.torchrun,
        "goals": GOALS[args.protocol],
    }
    (out / f"{args.protocol}.json").write_text(json.dumps(figures, indent=2))
    print(f"\n{args.protocol.upper()} results")
    keys = ("test_items", "skipped", "top1", "top3", "top5", "top1_0.5s", "top1_1s")
    keys += ("named_right", "unknown", "named_wrong", "min_score", "train_wall_s", "epochs_run", "train_processes")
    for key in keys:
        value = figures[key]
        print(f"  {key:<14} {value:.4f}" if isinstance(value, float) and value <= 1 else f"  {key:<14} {value}")
    print(f"  goals          {GOALS[args.protocol]}")


if __name__ == "__main__":
    main()
