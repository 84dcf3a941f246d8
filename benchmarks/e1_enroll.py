"""E1 of ../shared/BENCHMARKS.md: enrolling new voices without retraining, and rejecting strangers.

    python benchmarks/e1_enroll.py [--data ../shared/data] [--out benchmarks/out] [--train="OPTIONS" --tag NAME]

P2's time split; the last 51 speakers in numeric order of id are "new". The network is trained (plain
`spkidd train`) on the other 200 speakers' training audio; the 51 are enrolled from their training audio with the
enrollment code (one of them through the `spkidd enroll` command, timed); every 2-s test window is identified among
all 251 (top-1). Open set: only the 200 enrolled; genuine = a window of an enrolled speaker against its own
reference, stranger = a window of one of the 51 against its best-matching enrolled speaker: EER, and the
false-accept / false-reject rates at the threshold the model ships with.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from evaluation import SPKIDD, timed_train
from manifests import DEFAULT_DATA, MANIFEST_HEADER, p2, write_manifest

from spkidd.audio.decode import load_audio
from spkidd.audio_cache import AudioCache, default_cache_dir
from spkidd.dataset import Row, read_manifest
from spkidd.enrollment import enroll
from spkidd.evaluation import open_set_report, score_items
from spkidd.modelfile import ModelBundle, load_model, save_model

N_NEW = 51


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    parser.add_argument("--train", default="", help="extra `spkidd train` options, e.g. --train=--speed-classes")
    parser.add_argument("--tag", default="", help="suffix of the output names, to keep a variant's results apart")
    args = parser.parse_args()
    tag = f"_{args.tag}" if args.tag else ""
    out: Path = args.out / f"e1{tag}"
    out.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = p2(args.data, out)
    train_rows, test_rows = read_manifest(train_csv), read_manifest(test_csv)
    speakers = sorted({r.speaker for r in train_rows}, key=int)
    new = set(speakers[-N_NEW:])
    base = [(r.path, r.speaker, r.start, r.end) for r in train_rows if r.speaker not in new]
    model_path = out / "e1_200.safetensors"
    train_s = timed_train(write_manifest(out / "e1_train200.csv", MANIFEST_HEADER, base), model_path, args.train)
    new_rows = [r for r in train_rows if r.speaker in new]
    clip_dir = out / "enroll_clips"
    clip_dir.mkdir(exist_ok=True)
    one_enroll_s = enroll_by_command(model_path, new_rows[0], clip_dir, out / "one.safetensors")
    trained = load_model(model_path)
    enrolled, seconds = enroll_all(trained, new_rows, clip_dir)
    save_model(enrolled, out / "e1_251.safetensors")
    cache = AudioCache(default_cache_dir())
    closed = closed_set_top1(enrolled, test_rows, new, cache)
    open_items, _ = score_items(trained, test_rows, cache)
    report = open_set_report(trained, open_items, sorted(new, key=int))
    figures = {
        "train_options": args.train,
        "train_200_wall_s": round(train_s, 1),
        "enroll_one_command_s": round(one_enroll_s, 2),
        "enroll_in_process_median_s": round(float(np.median(seconds)), 3),
        **closed,
        "open_eer": report["eer"],
        "open_threshold": report["operating_threshold"],
        "open_far": report["far"],
        "open_frr": report["frr"],
        "open_top1_among_200": report["top1_enrolled"],
        "windows": len(open_items),
    }
    (args.out / f"e1{tag}.json").write_text(json.dumps(figures, indent=2))
    print("\nE1 results")
    for key, value in figures.items():
        print(f"  {key:<28} {value:.4f}" if isinstance(value, float) else f"  {key:<28} {value}")
    print(f"  {'goals':<28} EER <= 5%; FAR and FRR <= 6%; new51 within 1 point of P2; one enrollment < 3 s")


def clip_of(row: Row, clip_dir: Path) -> Path:
    """The row's training audio as a WAV file, as a user would enroll from."""
    clip = clip_dir / f"{row.speaker}.wav"
    if not clip.exists():
        sf.write(clip, load_audio(row.path, row.start, row.end), 16000)
    return clip


def enroll_by_command(model_path: Path, row: Row, clip_dir: Path, out: Path) -> float:
    """One enrollment through the command, as a user runs it (process start and model load included): seconds."""
    clip = clip_of(row, clip_dir)
    started = time.monotonic()
    command = [*SPKIDD, "enroll", str(model_path), str(clip), "--speaker", row.speaker, "--out", str(out)]
    subprocess.run(command, check=True)
    return time.monotonic() - started


def enroll_all(base: ModelBundle, rows: list[Row], clip_dir: Path) -> tuple[ModelBundle, list[float]]:
    """Every new speaker enrolled in turn with the enrollment code; each enrollment's seconds. One torch thread, as
    `spkidd enroll`, the daemon and its web page run enrollment: with two, whose second sleeps between the small
    LSTM steps (OMP_WAIT_POLICY=PASSIVE), one enrollment took 0.36-0.41 s instead of 0.06 s."""
    torch.set_num_threads(1)
    enrolled, seconds = base, []
    for row in rows:
        clip = clip_of(row, clip_dir)
        t0 = time.monotonic()
        enrolled, _ = enroll(enrolled, row.speaker, [clip])
        seconds.append(time.monotonic() - t0)
    return enrolled, seconds


def closed_set_top1(enrolled: ModelBundle, test_rows: list[Row], new: set[str], cache: AudioCache) -> dict[str, float]:
    """Top-1 of every test window among all 251 voices, and apart for the 200 trained and the 51 enrolled."""
    index = {label: i for i, label in enumerate(enrolled.labels)}
    hits: dict[str, list[bool]] = {"old": [], "new": []}
    for speaker, scored in score_items(enrolled, test_rows, cache)[0]:
        hits["new" if speaker in new else "old"].append(int(scored.probs.argmax()) == index[speaker])
    return {
        "closed_251_top1": float(np.mean(hits["old"] + hits["new"])),
        "closed_251_top1_old200": float(np.mean(hits["old"])),
        "closed_251_top1_new51": float(np.mean(hits["new"])),
    }


if __name__ == "__main__":
    main()
