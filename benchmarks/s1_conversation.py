"""S1 and S2 (BENCHMARKS.md): a 60-turn conversation built from P2 test audio, streamed through spkidd's pipeline.

usage: python benchmarks/s1_conversation.py MODEL [--protocol s1|s2] [--data ../shared/data] [--out DIR]
       [--gate key=value ...] [--decision key=value ...] [--step-ms 150]

S1 leaves 0.4-1.2 s between turns; S2 0-0.25 s (back to back: the gate often merges turns, and the model has to
notice the change of voice inside one utterance). Both are scored per turn (S1's rules) and by audio time (the
reference's `timeline`: what a subscriber of the current-speaker state sees). Then `spkidd identify --json` reads the
conversation as a file, and its timeline of who spoke when (looking back, with the model's own thresholds and the
default gate) is scored by audio time too.

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
from common import (
    DEFAULT_DATA,
    DEFAULT_OUT,
    S1_GAPS,
    S2_GAPS,
    S1Score,
    build_conversation,
    looking_back_score,
    score,
    timeline_score,
)
from dev_split import development_split
from evaluation import SPKIDD
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


def identify_timeline(model: Path, wav: Path) -> list[dict[str, Any]]:
    """What `spkidd identify` says of the conversation, run as a user runs it."""
    command = [*SPKIDD, "identify", str(model), str(wav), "--json"]
    proc = subprocess.run(command, check=True, capture_output=True, text=True)
    turns: list[dict[str, Any]] = json.loads(proc.stdout)["timeline"]
    return turns


def _reference_scores(reference: Path, verb: str, truth: Path, events_jsonl: Path) -> dict[str, Any]:
    command = [sys.executable, str(reference), verb, str(truth), str(events_jsonl)]
    proc = subprocess.run(command, check=True, capture_output=True, text=True)
    scores: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return scores


def cross_check(
    reference: Path,
    test_csv: Path,
    out: Path,
    events_jsonl: Path,
    gaps: tuple[float, float],
    ours: dict[str, dict[str, Any]],
) -> str:
    """Builds and scores with the reference tool; raises if anything differs."""
    ref_dir = out / "reference"
    gap_args = ["--gap-min", str(gaps[0]), "--gap-max", str(gaps[1])]
    subprocess.run([sys.executable, str(reference), "build", str(test_csv), str(ref_dir), *gap_args], check=True)
    for name in ("truth.csv", "conversation.wav"):
        if (ref_dir / name).read_bytes() != (out / name).read_bytes():
            raise SystemExit(f"cross-check failed: {name} differs from the reference build")
    for verb, figures in ours.items():
        theirs = _reference_scores(reference, verb, out / "truth.csv", events_jsonl)
        if json.dumps(theirs, sort_keys=True) != json.dumps(figures, sort_keys=True):
            raise SystemExit(f"cross-check failed: reference {verb} {theirs} != ours {figures}")
    return "conversation.wav, truth.csv, turn and timeline scores equal the reference"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--protocol", choices=("s1", "s2"), default="s1")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/out/PROTOCOL")
    parser.add_argument("--gate", nargs="*", default=[], help="GateSettings overrides, key=value")
    parser.add_argument("--decision", nargs="*", default=[], help="DecisionSettings overrides, key=value")
    parser.add_argument("--step-ms", type=int, default=PipelineSettings().step_ms)
    parser.add_argument("--reference", type=Path, default=DEFAULT_DATA.parent / "tools" / "conversation.py")
    parser.add_argument(
        "--split",
        choices=("test", "dev"),
        default="test",
        help="dev: a development conversation from the 2-s windows dev_split.py holds out of P2's training audio "
        "(its models never heard them), for tuning without touching the test",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def print_table(
    console: Console,
    title: str,
    result: S1Score,
    timeline: dict[str, float],
    looking_back: float,
    audio_s: float,
    cpu: float,
) -> None:
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("turn accuracy", f"{result.turn_accuracy:.1%} ({result.turns} turns)")
    table.add_row("first correct, median", f"{result.first_correct_median_s:.2f} s")
    table.add_row("first correct, p90", f"{result.first_correct_p90_s:.2f} s")
    table.add_row("turns never named right", str(result.turns_never_correct))
    table.add_row("wrong before right", f"{result.wrong_before_right:.1%}")
    table.add_row("final events", f"{result.finals} (turns {result.turns})")
    table.add_row("timeline: speech-time accuracy", f"{timeline['speech_time_accuracy']:.1%}")
    table.add_row("timeline: turn accuracy", f"{timeline['turn_accuracy']:.1%}")
    median, p90 = timeline["first_correct_median_s"], timeline["first_correct_p90_s"]
    table.add_row("timeline: first correct median / p90", f"{median:.2f} s / {p90:.2f} s")
    table.add_row("`identify` timeline (looking back): speech-time accuracy", f"{looking_back:.1%}")
    table.add_row("audio / CPU", f"{audio_s:.0f} s / {cpu:.1f} s (RTF {cpu / audio_s:.4f})")
    console.print(table)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    console = Console()

    out: Path = args.out or DEFAULT_OUT / args.protocol
    gaps = S1_GAPS if args.protocol == "s1" else S2_GAPS
    train_csv, test_csv = p2(args.data, out / "manifests")
    source_csv = test_csv if args.split == "test" else development_split(train_csv, out / "manifests")[1]
    wav, truth_csv = build_conversation(source_csv, out, seed=args.seed, gaps=gaps)
    bundle = load_model(args.model)
    settings = settings_from_args(args)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    events, stats = asyncio.run(stream(bundle, wav, settings))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    events_jsonl = out / "events.jsonl"
    events_jsonl.write_text("".join(json.dumps(e) + "\n" for e in events))
    result = score(truth_csv, events)
    timeline = timeline_score(truth_csv, events)
    looking_back = looking_back_score(truth_csv, identify_timeline(args.model, wav))
    official = args.split == "test" and args.seed == 0
    name = args.protocol.upper()
    if official and args.reference.is_file():
        ours = {"score": result.to_dict(), "timeline": timeline}
        check = cross_check(args.reference, test_csv, out, events_jsonl, gaps, ours)
    else:
        check = "skipped" if official else f"not the {name} protocol: {args.split} audio, seed {args.seed}"

    title = f"{name} conversation, model {bundle.name} {bundle.version}"
    print_table(console, title, result, timeline, looking_back, stats.audio_s, cpu)
    console.print(f"cross-check: {check}")
    report = {
        "benchmark": name if official else f"{name}-dev",
        "split": args.split,
        "seed": args.seed,
        "model": str(args.model),
        "model_name": bundle.name,
        "model_version": bundle.version,
        **result.to_dict(),
        "timeline": timeline,
        "identify_timeline_speech_time_accuracy": looking_back,
        "gate": asdict(settings.gate),
        "decision": settings.decision,
        "model_decision": bundle.decision,
        "step_ms": settings.step_ms,
        "audio_s": stats.audio_s,
        "cpu_s": cpu,
        "wall_s": wall,
        "cross_check": check,
    }
    (out / f"{args.protocol}.json").write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"wrote {out / f'{args.protocol}.json'} and {events_jsonl}")


if __name__ == "__main__":
    main()
