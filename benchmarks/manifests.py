"""The fixed P1/P2 splits of ../shared/BENCHMARKS.md as manifest CSVs (same splits as shared/tools/manifests.py)."""

from __future__ import annotations

import csv
from pathlib import Path

import soundfile as sf

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _write(path: Path, header: list[str], rows: list[tuple[object, ...]]) -> Path:
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
    return _write(out / "p1_train.csv", ["path", "speaker"], train), _write(
        out / "p1_test.csv", ["path", "speaker"], test
    )


def time_split(files: list[Path], out: Path, prefix: str) -> tuple[Path, Path]:
    """First 60% of each file is training audio; the rest is cut into consecutive 2.0-s test windows."""
    train, test = [], []
    for f in files:
        duration = sf.info(str(f)).duration
        cut = 0.6 * duration
        speaker = f.name.split("-")[0]
        train.append((f.resolve(), speaker, 0.0, round(cut, 4)))
        t = cut
        while t + 2.0 <= duration + 1e-9:
            test.append((f.resolve(), speaker, round(t, 4), round(t + 2.0, 4)))
            t += 2.0
    out.mkdir(parents=True, exist_ok=True)
    header = ["path", "speaker", "start", "end"]
    return _write(out / f"{prefix}_train.csv", header, train), _write(out / f"{prefix}_test.csv", header, test)


def p2(data: Path, out: Path) -> tuple[Path, Path]:
    return time_split(sorted((data / "librispeech-251").glob("*.flac")), out, "p2")
