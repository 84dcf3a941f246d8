"""The S1 conversation (BENCHMARKS.md) shared by the S1 and T1 scripts: build it, and score an event stream.

Both follow ../shared/tools/conversation.py step for step (the same rng calls in the same order, the same sample
slicing, the same scoring rules), so the truth.csv and the figures are the reference's; the scripts cross-check
that when the reference is present.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from spkidd import SAMPLE_RATE
from spkidd.audio.decode import resample

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_OUT = REPO / "benchmarks" / "out"


def load_span(path: str, start: float, end: float) -> np.ndarray:
    """The [start, end) seconds of a file as 16-kHz mono float32, the way the conversations are built from it."""
    info = sf.info(path)
    x, sr = sf.read(path, start=int(start * info.samplerate), stop=int(end * info.samplerate), dtype="float32")
    if x.ndim > 1:
        x = x.mean(1)
    return resample(x, sr) if sr != SAMPLE_RATE else x


S1_GAPS = (0.4, 1.2)
S2_GAPS = (0.0, 0.25)
"""Silence between turns: S1 leaves room for the gate; S2's back-to-back turns are often merged by it."""


def build_conversation(
    test_csv: Path, out: Path, turns: int = 60, seed: int = 0, gaps: tuple[float, float] = S1_GAPS
) -> tuple[Path, Path]:
    """Writes out/conversation.wav and out/truth.csv (start,end,speaker) from P2's test rows."""
    rng = np.random.default_rng(seed)
    pieces: dict[str, list[tuple[str, float, float]]] = {}
    with test_csv.open() as handle:
        for r in csv.DictReader(handle):
            pieces.setdefault(r["speaker"], []).append(
                (r["path"], float(r.get("start") or 0), float(r.get("end") or 0))
            )
    spans = {}
    for spk, rows in pieces.items():
        path = rows[0][0]
        s = min(r[1] for r in rows if r[0] == path)
        e = max(r[2] for r in rows if r[0] == path)
        if e - s >= 1.5:
            spans[spk] = (path, s, e)
    speakers = sorted(spans)
    audio: list[np.ndarray] = []
    truth: list[tuple[float, float, str]] = []
    t, prev = 0.0, None
    for _ in range(turns):
        spk = prev
        while spk == prev:
            spk = speakers[rng.integers(len(speakers))]
        assert spk is not None
        path, s, e = spans[spk]
        length = min(rng.uniform(1.5, 4.0), e - s)
        off = rng.uniform(0, e - s - length)
        x = load_span(path, s + off, s + off + length)
        truth.append((round(t, 3), round(t + len(x) / SAMPLE_RATE, 3), spk))
        audio.append(x)
        t += len(x) / SAMPLE_RATE
        gap = np.zeros(int(rng.uniform(*gaps) * SAMPLE_RATE), np.float32)
        audio.append(gap)
        t += len(gap) / SAMPLE_RATE
        prev = spk
    out.mkdir(parents=True, exist_ok=True)
    wav, truth_csv = out / "conversation.wav", out / "truth.csv"
    sf.write(wav, np.concatenate(audio), SAMPLE_RATE, subtype="PCM_16")
    with truth_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["start", "end", "speaker"])
        writer.writerows(truth)
    return wav, truth_csv


@dataclass(frozen=True)
class S1Score:
    turns: int
    turn_accuracy: float
    first_correct_median_s: float
    first_correct_p90_s: float
    turns_never_correct: int
    wrong_before_right: float
    finals: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score(truth_csv: Path, events: list[dict[str, Any]]) -> S1Score:
    """The reference scorer's rules: an event belongs to the turn whose span (less 0.3 s) holds its start."""
    with truth_csv.open() as handle:
        truth = [(float(r["start"]), float(r["end"]), r["speaker"]) for r in csv.DictReader(handle)]

    def turn_of(ev: dict[str, Any]) -> int:
        t = float(ev.get("start", ev.get("end", 0)))
        for i, (s, e, _) in enumerate(truth):
            if s - 0.3 <= t <= e:
                return i
        return min(range(len(truth)), key=lambda i: abs(truth[i][0] - t))

    correct, latencies, wrong_first, finals = 0, [], 0, 0
    by_turn: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(truth))}
    for ev in events:
        by_turn[turn_of(ev)].append(ev)
        if ev.get("final"):
            finals += 1
    for i, (s, _e, spk) in enumerate(truth):
        evs = by_turn[i]
        fin = [ev for ev in evs if ev.get("final")]
        if fin and fin[-1].get("speaker") == spk:
            correct += 1
        hits = [float(ev["end"]) - s for ev in evs if ev.get("speaker") == spk]
        if hits:
            latencies.append(max(0.0, min(hits)))
        first = next((ev for ev in evs if ev.get("speaker") not in (None, "unknown")), None)
        if first is not None and first.get("speaker") != spk:
            wrong_first += 1
    n = len(truth)
    lat = np.array(latencies) if latencies else np.array([np.inf])
    return S1Score(
        turns=n,
        turn_accuracy=correct / n,
        first_correct_median_s=float(np.median(lat)),
        first_correct_p90_s=float(np.percentile(lat, 90)),
        turns_never_correct=n - len(latencies),
        wrong_before_right=wrong_first / n,
        finals=finals,
    )


def timeline_score(truth_csv: Path, events: list[dict[str, Any]], slack: float = 0.3) -> dict[str, float]:
    """The reference's `timeline` rules: what a subscriber of the current-speaker state sees at every 10 ms of true
    speech (the latest event naming anyone; `unknown` counts wrong), and per turn the last event between its start
    and `slack` after its end."""
    with truth_csv.open() as handle:
        truth = [(float(r["start"]), float(r["end"]), r["speaker"]) for r in csv.DictReader(handle)]
    named = sorted((float(ev["end"]), ev["speaker"]) for ev in events if ev.get("speaker"))
    times = np.array([t for t, _ in named])
    who = [w for _, w in named]
    hit = total = 0
    for s, e, spk in truth:
        for t in np.arange(s, e, 0.01):
            i = int(np.searchsorted(times, t, side="right")) - 1
            total += 1
            hit += int(i >= 0 and who[i] == spk)
    correct, latencies = 0, []
    for s, e, spk in truth:
        span = [(t, w) for t, w in named if s <= t <= e + slack]
        if span and span[-1][1] == spk:
            correct += 1
        first = next((t for t, w in span if w == spk), None)
        if first is not None:
            latencies.append(max(0.0, first - s))
    n = len(truth)
    lat = np.array(latencies) if latencies else np.array([np.inf])
    return {
        "turns": n,
        "speech_time_accuracy": hit / max(total, 1),
        "turn_accuracy": correct / n,
        "first_correct_median_s": float(np.median(lat)),
        "first_correct_p90_s": float(np.percentile(lat, 90)),
        "turns_never_correct": n - int(np.isfinite(lat).sum()),
    }


def looking_back_score(truth_csv: Path, turns: list[dict[str, Any]]) -> float:
    """`identify`'s timeline scored by audio time: the share of 10-ms points of true speech that lie in a turn of
    the timeline naming the right speaker (in a pause of the timeline, or in an `unknown` turn, they count wrong)."""
    with truth_csv.open() as handle:
        truth = [(float(r["start"]), float(r["end"]), r["speaker"]) for r in csv.DictReader(handle)]
    starts = np.array([t["start"] for t in turns])
    hit = total = 0
    for s, e, spk in truth:
        for t in np.arange(s, e, 0.01):
            i = int(np.searchsorted(starts, t, side="right")) - 1
            total += 1
            hit += int(i >= 0 and t < turns[i]["end"] and turns[i]["speaker"] == spk)
    return hit / max(total, 1)
