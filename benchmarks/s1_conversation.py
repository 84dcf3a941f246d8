"""S1 (BENCHMARKS.md): a 60-turn conversation built from P2 test audio, streamed through spkidd's own pipeline.

usage: python benchmarks/s1_conversation.py MODEL [--data ../shared/data] [--out benchmarks/out/s1]
       [--gate key=value ...] [--decision key=value ...] [--step-ms 150]

File replay as fast as possible with audio-time stamps -> gate -> features -> model -> decider; the events go to
events.jsonl and are scored like ../shared/tools/conversation.py. When that reference is present, the script also
builds the conversation and scores the events with it and refuses to report figures that differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from common import DEFAULT_DATA, DEFAULT_OUT, S1Score, build_conversation, score
from manifests import p2
from rich.console import Console
from rich.table import Table

from spkidd.audio.replay import ReplaySource
from spkidd.events import Identification
from spkidd.modelfile import ModelBundle, load_model
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.vad import GateSettings


def parse_pairs(pairs: list[str], types: dict[str, type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in types:
            raise SystemExit(f"unknown setting {key!r}; known: {sorted(types)}")
        out[key] = types[key](value)
    return out


def settings_from_args(args: argparse.Namespace) -> PipelineSettings:
    gate_types = {f.name: int if f.type in ("int", int) else float for f in fields(GateSettings)}
    gate = GateSettings(**parse_pairs(args.gate, gate_types))
    decision = parse_pairs(args.decision, {k: float for k in DECISION_KEYS})
    return PipelineSettings(gate=gate, decision=decision, step_ms=args.step_ms)


DECISION_KEYS = ("min_score", "min_confidence", "min_margin", "stable_steps", "min_speech_s", "top_k")


async def stream(bundle: ModelBundle, wav: Path, settings: PipelineSettings) -> tuple[list[dict[str, Any]], Any]:
    events: list[dict[str, Any]] = []

    def emit(event: PipelineEvent) -> None:
        if isinstance(event, Identification):
            events.append(event.to_dict())

    pipeline = StreamPipeline(ReplaySource("s1", wav, realtime=False), bundle, settings)
    await pipeline.run(emit)
    return events, pipeline.stats


def cross_check(reference: Path, test_csv: Path, out: Path, events_jsonl: Path, ours: S1Score) -> str:
    """Builds and scores with the reference tool; raises if anything differs."""
    ref_dir = out / "reference"
    subprocess.run([sys.executable, str(reference), "build", str(test_csv), str(ref_dir)], check=True)
    for name in ("truth.csv", "conversation.wav"):
        if (ref_dir / name).read_bytes() != (out / name).read_bytes():
            raise SystemExit(f"S1 cross-check failed: {name} differs from the reference build")
    proc = subprocess.run(
        [sys.executable, str(reference), "score", str(out / "truth.csv"), str(events_jsonl)],
        check=True,
        capture_output=True,
        text=True,
    )
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    if json.dumps(theirs, sort_keys=True) != json.dumps(ours.to_dict(), sort_keys=True):
        raise SystemExit(f"S1 cross-check failed: reference scores {theirs} != ours {ours.to_dict()}")
    return "conversation.wav, truth.csv and scores equal the reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT / "s1")
    parser.add_argument("--gate", nargs="*", default=[], help="GateSettings overrides, key=value")
    parser.add_argument("--decision", nargs="*", default=[], help="DecisionSettings overrides, key=value")
    parser.add_argument("--step-ms", type=int, default=PipelineSettings().step_ms)
    parser.add_argument("--reference", type=Path, default=DEFAULT_DATA.parent / "tools" / "conversation.py")
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="train: a development conversation from P2 TRAINING audio, for tuning without touching the test",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    console = Console()

    out: Path = args.out
    train_csv, test_csv = p2(args.data, out / "manifests")
    wav, truth_csv = build_conversation(test_csv if args.split == "test" else train_csv, out, seed=args.seed)
    bundle = load_model(args.model)
    settings = settings_from_args(args)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    events, stats = asyncio.run(stream(bundle, wav, settings))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    events_jsonl = out / "events.jsonl"
    events_jsonl.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = score(truth_csv, events)
    official = args.split == "test" and args.seed == 0
    if official and args.reference.is_file():
        check = cross_check(args.reference, test_csv, out, events_jsonl, result)
    else:
        check = "skipped" if official else f"not the S1 protocol: {args.split} audio, seed {args.seed}"

    table = Table(title=f"S1 conversation, model {bundle.name} {bundle.version}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("turn accuracy", f"{result.turn_accuracy:.1%} ({result.turns} turns)")
    table.add_row("first correct, median", f"{result.first_correct_median_s:.2f} s")
    table.add_row("first correct, p90", f"{result.first_correct_p90_s:.2f} s")
    table.add_row("turns never named right", str(result.turns_never_correct))
    table.add_row("wrong before right", f"{result.wrong_before_right:.1%}")
    table.add_row("final events", f"{result.finals} (turns {result.turns})")
    table.add_row("audio / CPU", f"{stats.audio_s:.0f} s / {cpu:.1f} s (RTF {cpu / stats.audio_s:.4f})")
    console.print(table)
    console.print(f"cross-check: {check}")
    report = {
        "benchmark": "S1" if official else "S1-dev",
        "split": args.split,
        "seed": args.seed,
        "model": str(args.model),
        "model_name": bundle.name,
        "model_version": bundle.version,
        **result.to_dict(),
        "gate": asdict(settings.gate),
        "decision": settings.decision,
        "model_decision": bundle.decision,
        "step_ms": settings.step_ms,
        "audio_s": stats.audio_s,
        "cpu_s": cpu,
        "wall_s": wall,
        "cross_check": check,
    }
    (out / "s1.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out / 's1.json'} and {events_jsonl}")


if __name__ == "__main__":
    main()
