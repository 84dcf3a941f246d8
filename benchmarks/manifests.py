"""The fixed P1/P2 splits of ../shared/BENCHMARKS.md as manifest CSVs (same splits as shared/tools/manifests.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import soundfile as sf

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


MANIFEST_HEADER = ["path", "speaker", "start", "end"]


def write_manifest(path: Path, header: list[str], rows: list[tuple[object, ...]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def p1(data: Path, out: Path) -> tuple[Path, Path]:
    """FSDD: index 5-49 train, 0-4 test."""
    train, test = [], []
    for f in sorted((data / "fsdd" / "recordings").glob("*.wav")):
        _digit, speaker, index = f.stem.split("_")
        (test if int(index) < 5 else train).append((f.resolve(), speaker))
    out.mkdir(parents=True, exist_ok=True)
    return write_manifest(out / "p1_train.csv", ["path", "speaker"], train), write_manifest(
        out / "p1_test.csv", ["path", "speaker"], test
    )


def split_span(
    path: object, speaker: str, start: float, end: float, share: float
) -> tuple[tuple[object, ...], list[tuple[object, ...]]]:
    """The first `share` of [start, end] as one training row; the rest cut into consecutive 2.0-s windows."""
    cut = start + share * (end - start)
    windows = []
    t = cut
    while t + 2.0 <= end + 1e-9:
        windows.append((path, speaker, round(t, 4), round(t + 2.0, 4)))
        t += 2.0
    return (path, speaker, start, round(cut, 4)), windows


def time_split(files: list[Path], out: Path, prefix: str) -> tuple[Path, Path]:
    """First 60% of each file is training audio; the rest is cut into consecutive 2.0-s test windows."""
    train, test = [], []
    for f in files:
        row, windows = split_span(f.resolve(), f.name.split("-")[0], 0.0, sf.info(str(f)).duration, 0.6)
        train.append(row)
        test.extend(windows)
    out.mkdir(parents=True, exist_ok=True)
    return (
        write_manifest(out / f"{prefix}_train.csv", MANIFEST_HEADER, train),
        write_manifest(out / f"{prefix}_test.csv", MANIFEST_HEADER, test),
    )


def p2(data: Path, out: Path) -> tuple[Path, Path]:
    return time_split(sorted((data / "librispeech-251").glob("*.flac")), out, "p2")
