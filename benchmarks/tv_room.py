"""A TV in the room: minutes of voices a household never heard, replayed through `spkidd run` and a real Mosquitto.

    nice -n 10 python benchmarks/tv_room.py [--minutes 15] [--voices 72] [--seed 0] [--min-score 0.4 0.5 ...]
        [--data ../shared/data] [--out benchmarks/out]

The TV (seed 0): turns of LibriSpeech voices taken from P2's *test* audio (BENCHMARKS.md), each a random voice (never
the same twice in a row) saying a random contiguous 1.5-4.0 s of its test audio, 0.4-1.2 s of silence between turns,
until MINUTES of programme; VOICES voices drawn from those outside household b. Two households, each trained with
`spkidd train` and default flags:
- a, FSDD's six speakers (5 minutes of P1's training clips, as benchmarks/household.py), hearing the TV band-limited
  to FSDD's 8 kHz sampling, as its own recordings are;
- b, six LibriSpeech voices (drawn with the same seed) trained on their P2 training audio, hearing the TV as it is.
Each TV is replayed unpaced from a file source through `spkidd run` (config defaults otherwise) publishing to Mosquitto
on 127.0.0.1; a subscriber keeps every message. Figures per hour of TV: utterances (`speaking` OFF to ON), utterances
named as a household member (any event of the utterance names one; by the first name given) with their share, utterances
whose final names a member, events by type (automations trigger on `identified`), retained state messages, and changes
of the "Current speaker" sensor's value (the speaker, `unrecognized` for `unknown`, or `none`). Beside them, what the
threshold costs the household: the share of its own held-out clips (a: P1's 300 test clips; b: its members' P2 test
windows) `spkidd evaluate` names right. --min-score replays each household's TV again with config.toml's `[decision]
min_score` at each value given (the threshold row says which). Writes OUT/tv_room/summary.json. About 3 minutes on 2
cores (half a minute more per --min-score).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import resource
import signal
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import soxr
from common import load_span
from evaluation import evaluate, timed_train
from household import household_manifest
from manifests import DEFAULT_DATA, MANIFEST_HEADER, p1, p2, write_manifest

from spkidd import SAMPLE_RATE
from spkidd.audio.decode import resample
from spkidd.modelfile import load_model, save_model

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the test helpers: config files, Mosquitto and the daemon as a process

from tests.support.daemon import DaemonProcess, file_source, write_config  # noqa: E402
from tests.support.mosquitto import Collector, Received, running_mosquitto  # noqa: E402

HOUSEHOLD_SIZE = 6
FSDD_RATE = 8000
INSTANCE = "testhouse"
SOURCE = "tv"
TOPIC = f"spkidd/{INSTANCE}/{SOURCE}"
UNRECOGNIZED = "unrecognized"
"""The "Current speaker" sensor's value for `unknown` (spkidd.mqtt.payloads' discovery template)."""


@dataclass(frozen=True)
class Piece:
    """One voice's test audio: a span of its file."""

    path: str
    start: float
    end: float


@dataclass
class Replayed:
    """What a subscriber saw of one household hearing the TV, per hour of TV where it says so."""

    household: str
    threshold: float
    tv_minutes: float
    utterances_per_h: float
    named_share: float
    named_per_h: float
    named_by_name_per_h: dict[str, float]
    final_named_per_h: float
    events_per_h: dict[str, float]
    state_messages_per_h: float
    sensor_changes_per_h: float
    daemon_cpu_s: float
    train_wall_s: float = 0.0
    own_named_right: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)


def p2_test_spans(test_csv: Path) -> dict[str, Piece]:
    """Each P2 speaker's test audio as one span (its 2-s windows are consecutive in one file)."""
    spans: dict[str, Piece] = {}
    with test_csv.open() as handle:
        for row in csv.DictReader(handle):
            old = spans.get(row["speaker"])
            start, end = float(row["start"]), float(row["end"])
            if old is not None:
                start, end = min(start, old.start), max(end, old.end)
            spans[row["speaker"]] = Piece(row["path"], start, end)
    return spans


def build_tv(pieces: dict[str, Piece], voices: list[str], minutes: float, seed: int, wav: Path) -> Path:
    """The programme: turns of `voices` with pauses, until `minutes` of audio, written as 16-bit WAV."""
    rng = np.random.default_rng(seed)
    audio: list[np.ndarray] = []
    total, previous = 0, ""
    while total < minutes * 60 * SAMPLE_RATE:
        voice = previous
        while voice == previous:
            voice = voices[rng.integers(len(voices))]
        piece = pieces[voice]
        length = min(rng.uniform(1.5, 4.0), piece.end - piece.start)
        offset = rng.uniform(0, piece.end - piece.start - length)
        turn = load_span(piece.path, piece.start + offset, piece.start + offset + length)
        pause = np.zeros(int(rng.uniform(0.4, 1.2) * SAMPLE_RATE), np.float32)
        audio += [turn, pause]
        total += len(turn) + len(pause)
        previous = voice
    sf.write(wav, np.concatenate(audio), SAMPLE_RATE, subtype="PCM_16")
    return wav


def band_limited(wav: Path, rate: int, out: Path) -> Path:
    """The recording as a microphone sampling at `rate` hears it, back at the daemon's 16 kHz."""
    audio, _ = sf.read(wav, dtype="float32")
    sf.write(out, resample(soxr.resample(audio, SAMPLE_RATE, rate), rate), SAMPLE_RATE, subtype="PCM_16")
    return out


@dataclass(frozen=True)
class Household:
    """What one household is trained on, its own held-out audio, and the TV as its microphone hears it."""

    name: str
    train: Path
    held_out: Path
    tv: Path


def speakers_rows(p2_csv: Path, speakers: list[str], out: Path) -> Path:
    """The chosen speakers' rows of a P2 manifest as a manifest."""
    with p2_csv.open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["speaker"] in speakers]
    return write_manifest(out, MANIFEST_HEADER, [tuple(r[k] for k in MANIFEST_HEADER) for r in rows])


def _payloads(messages: list[Received], topic: str) -> list[Any]:
    """The payloads on `topic` as published: a retained one the broker hands a subscriber again when it
    reconnects (under load, past its keep-alive) is not counted twice."""
    return [
        json.loads(m.payload) if m.payload.startswith(b"{") else m.payload.decode()
        for m in messages
        if m.topic == topic and not m.retain
    ]


def _sensor_value(state: dict[str, Any]) -> str:
    return UNRECOGNIZED if state["speaker"] == "unknown" else str(state["speaker"])


def _utterances(speaking: list[str]) -> int:
    """Starts of speech: an ON after an OFF (or first). The daemon's connection publishes the retained state it has
    then, so an utterance already open when it connects (an unpaced file starts at once) is said ON twice."""
    return sum(now == "ON" and before != "ON" for before, now in pairwise(["OFF", *speaking]))


def tally(messages: list[Received], labels: list[str]) -> dict[str, Any]:
    """Counts over the whole replay: utterances, named ones (by name), events by type, states, sensor changes."""
    events = _payloads(messages, f"{TOPIC}/event")
    states = _payloads(messages, f"{TOPIC}/speaker")
    named: dict[str, str] = {}
    for e in events:
        if e["speaker"] in labels:
            named.setdefault(e["utterance_id"], e["speaker"])
    finals = [e for e in events if e["final"] and e["speaker"] in labels]
    values = [_sensor_value(s) for s in states]
    return {
        "utterances": _utterances(_payloads(messages, f"{TOPIC}/speaking")),
        "named": len(named),
        "named_by_name": dict(Counter(named.values()).most_common()),
        "final_named": len(finals),
        "events": {
            kind: sum(e["event_type"] == kind for e in events) for kind in ("identified", "changed", "final", "unknown")
        },
        "state_messages": len(states),
        "sensor_changes": sum(a != b for a, b in pairwise(values)),
    }


async def _collect(broker_port: int, config: Path, log: Path) -> tuple[list[Received], float]:
    """Every message of one replay, and the daemon's CPU seconds: run until the source's audio has ended and its
    last utterance is closed, then stopped with SIGTERM (which the daemon answers with its `offline`)."""
    async with Collector(broker_port, ["spkidd/#"]) as sub:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        daemon = DaemonProcess(config, log)
        await asyncio.to_thread(daemon.wait_log, lambda text: "audio ended" in text, 1800.0)
        await sub.wait_for(lambda ms: _payloads(ms, f"{TOPIC}/status")[-1:] == ["offline"], timeout=60)
        daemon.signal(signal.SIGTERM)
        await asyncio.to_thread(daemon.wait, 60)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        await sub.wait_for(lambda ms: _payloads(ms, f"spkidd/{INSTANCE}/status")[-1:] == ["offline"], timeout=30)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if sub.connects != 1:
        print(f"  the subscriber connected {sub.connects} times: retained messages it got again are left out")
    return sub.messages, cpu


def replay(name: str, model: Path, tv: Path, work: Path, min_score: float | None = None) -> Replayed:
    """The TV through `spkidd run` and Mosquitto, as a subscriber of the household's source sees it; `min_score`:
    config.toml's `[decision] min_score` instead of the model's own threshold."""
    bundle = load_model(model)
    decision = "" if min_score is None else f"[decision]\nmin_score = {min_score}\n"
    with running_mosquitto(work) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}'
        config = write_config(
            work / "config.toml",
            model.resolve(),
            file_source(tv.resolve(), SOURCE, realtime=False, loop=False),
            mqtt,
            decision,
            instance=INSTANCE,
        )
        messages, cpu = asyncio.run(_collect(broker.port, config, work / "daemon.log"))
    counts = tally(messages, bundle.labels)
    hours = sf.info(tv).duration / 3600

    def per_h(n: float) -> float:
        return round(n / hours, 1)

    return Replayed(
        household=name,
        threshold=round(float(bundle.decision["min_score"] if min_score is None else min_score), 3),
        tv_minutes=round(hours * 60, 2),
        utterances_per_h=per_h(counts["utterances"]),
        named_share=round(counts["named"] / max(counts["utterances"], 1), 4),
        named_per_h=per_h(counts["named"]),
        named_by_name_per_h={k: per_h(v) for k, v in counts["named_by_name"].items()},
        final_named_per_h=per_h(counts["final_named"]),
        events_per_h={k: per_h(v) for k, v in counts["events"].items()},
        state_messages_per_h=per_h(counts["state_messages"]),
        sensor_changes_per_h=per_h(counts["sensor_changes"]),
        daemon_cpu_s=round(cpu, 1),
        counts=counts,
    )


def own_named_right(model: Path, held_out: Path, min_score: float | None, work: Path) -> float:
    """The share of the household's own held-out clips `spkidd evaluate` names right (the daemon's final answer),
    with the model's threshold or with `min_score` written into a copy of the model, as the config's would be."""
    if min_score is not None:
        bundle = load_model(model)
        bundle.decision = {**bundle.decision, "min_score": min_score}
        model = work / f"household_min_score_{min_score}.safetensors"
        save_model(bundle, model)
    _, figures = evaluate(model, held_out, work / f"report_{min_score}", quiet=True)
    return float(figures["named_right"])


def print_table(results: list[Replayed]) -> None:
    rows = [
        ("unknown-speaker threshold", lambda r: f"{r.threshold:.3f}"),
        ("TV minutes", lambda r: f"{r.tv_minutes:.1f}"),
        ("utterances / h", lambda r: f"{r.utterances_per_h:.0f}"),
        ("named as a member: share", lambda r: f"{r.named_share:.1%}"),
        ("named as a member / h", lambda r: f"{r.named_per_h:.0f}"),
        ("  by name / h", lambda r: ", ".join(f"{k} {v:.0f}" for k, v in r.named_by_name_per_h.items()) or "-"),
        ("finals naming a member / h", lambda r: f"{r.final_named_per_h:.0f}"),
        ("events / h: unknown", lambda r: f"{r.events_per_h['unknown']:.0f}"),
        (
            "events / h: identified/changed/final",
            lambda r: "/".join(f"{r.events_per_h[k]:.0f}" for k in ("identified", "changed", "final")),
        ),
        ("state messages / h", lambda r: f"{r.state_messages_per_h:.0f}"),
        ("Current speaker changes / h", lambda r: f"{r.sensor_changes_per_h:.0f}"),
        ("own held-out clips named right", lambda r: f"{r.own_named_right:.1%}"),
        ("daemon CPU s (unpaced)", lambda r: f"{r.daemon_cpu_s:.0f}"),
        ("training wall s", lambda r: f"{r.train_wall_s:.0f}"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"{'household':{width}s}  " + "  |  ".join(r.household for r in results))
    for label, cell in rows:
        print(f"{label:{width}s}  " + "  |  ".join(cell(r) for r in results))


def households(data: Path, work: Path, p2_train: Path, p2_test: Path, members: list[str], tv: Path) -> list[Household]:
    """a: FSDD's six speakers on five minutes of their P1 training clips, the TV band-limited like their recordings;
    b: six LibriSpeech voices on their P2 training audio."""
    fsdd_train, fsdd_test = p1(data, work)
    return [
        Household(
            "a FSDD six",
            household_manifest(fsdd_train, 5.0, work)[0],
            fsdd_test,
            band_limited(tv, FSDD_RATE, work / "tv_8k.wav"),
        ),
        Household(
            "b LibriSpeech six",
            speakers_rows(p2_train, members, work / "librispeech_train.csv"),
            speakers_rows(p2_test, members, work / "librispeech_test.csv"),
            tv,
        ),
    ]


def replays(household: Household, work: Path, min_scores: list[float]) -> list[Replayed]:
    """The household trained with default flags, then the TV replayed against it at its own threshold and at each of
    `min_scores`."""
    home = work / household.name.split()[0]
    home.mkdir(exist_ok=True)
    model = home / "household.safetensors"
    print(f"{household.name}: training", flush=True)
    train_s = timed_train(household.train, model, log=home / "train.log")
    results = []
    for min_score in [None, *min_scores]:
        at = "" if min_score is None else f" at min_score {min_score}"
        print(f"{household.name}: replaying the TV{at}", flush=True)
        result = replay(household.name, model, household.tv, home, min_score)
        result.train_wall_s = round(train_s, 1)
        result.own_named_right = own_named_right(model, household.held_out, min_score, home)
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--voices", type=int, default=72, help="voices of the TV")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--min-score", type=float, nargs="*", default=[], help="more replays at these [decision] min_score"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no benchmark data at {args.data} (pass --data)")
    started = time.monotonic()
    work: Path = args.out / "tv_room"
    work.mkdir(parents=True, exist_ok=True)
    p2_train, p2_test = p2(args.data, work)
    pieces = p2_test_spans(p2_test)
    order = [str(s) for s in np.random.default_rng(args.seed).permutation(sorted(pieces))]
    members, voices = order[:HOUSEHOLD_SIZE], order[HOUSEHOLD_SIZE : HOUSEHOLD_SIZE + args.voices]
    tv = build_tv(pieces, voices, args.minutes, args.seed, work / "tv.wav")
    results = []
    for household in households(args.data, work, p2_train, p2_test, members, tv):
        results += replays(household, work, args.min_score)
    print_table(results)
    summary = {
        "seed": args.seed,
        "voices": voices,
        "members_b": members,
        "wall_s": round(time.monotonic() - started, 1),
        "households": [asdict(r) for r in results],
    }
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wall time {summary['wall_s']:.0f} s; {work / 'summary.json'}")


if __name__ == "__main__":
    main()
