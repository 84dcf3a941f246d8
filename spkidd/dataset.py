"""Dataset layouts -> manifest rows (path, speaker, start, end).

Three layouts are understood: a manifest CSV (`path,speaker[,start,end]`, paths relative to the CSV), a folder per
speaker (VoxCeleb, LibriSpeech), and a flat folder whose file names carry the speaker (`--label-pattern`).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".ogg", ".mp3", ".m4a", ".opus", ".aac", ".wma", ".aiff", ".aif"})
MANIFEST_COLUMNS = ("path", "speaker", "start", "end")


class DataError(Exception):
    """Input data that cannot be used as given; the message names the file (and line)."""


@dataclass(frozen=True)
class Row:
    path: Path
    speaker: str
    start: float = 0.0
    end: float | None = None

    @property
    def key(self) -> str:
        return f"{self.path}|{self.start}|{self.end}"


def _parse_time(value: str, column: str, where: str) -> float | None:
    value = value.strip()
    if value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise DataError(f"{where}: {column} {value!r} is not a number of seconds") from None
    if seconds < 0:
        raise DataError(f"{where}: {column} {seconds} is negative")
    return seconds


def read_manifest(csv_path: Path) -> list[Row]:
    """Reads `path,speaker[,start,end]`; a missing file, unknown column or bad range is refused with its line."""
    rows: list[Row] = []
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        unknown = [c for c in columns if c not in MANIFEST_COLUMNS]
        if unknown:
            raise DataError(
                f"{csv_path}:1: unknown column(s) {', '.join(unknown)}; expected {', '.join(MANIFEST_COLUMNS)}"
            )
        if "path" not in columns or "speaker" not in columns:
            raise DataError(f"{csv_path}:1: a manifest needs the columns path and speaker")
        for line, raw in enumerate(reader, start=2):
            where = f"{csv_path}:{line}"
            if None in raw:  # DictReader files the fields beyond the header under the key None
                fields = len(columns) + len(raw[None])
                raise DataError(f"{where}: {fields} fields, but the header has {len(columns)} ({','.join(columns)})")
            record = {k.strip(): (v or "") for k, v in raw.items()}
            if not record.get("path", "").strip() or not record.get("speaker", "").strip():
                raise DataError(f"{where}: empty path or speaker")
            path = Path(record["path"].strip())
            if not path.is_absolute():
                path = csv_path.parent / path
            if not path.is_file():
                raise DataError(f"{where}: no such file {path}")
            start = _parse_time(record.get("start", ""), "start", where) or 0.0
            end = _parse_time(record.get("end", ""), "end", where)
            if end is not None and end <= start:
                raise DataError(f"{where}: end {end} is not after start {start}")
            rows.append(Row(path=path, speaker=record["speaker"].strip(), start=start, end=end))
    if not rows:
        raise DataError(f"{csv_path}: the manifest lists no audio")
    return rows


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


def scan_speaker_folders(root: Path) -> list[Row]:
    """`root/<speaker>/**/<audio>`: every audio file below a top-level folder belongs to that speaker."""
    rows = [
        Row(path=f, speaker=speaker_dir.name)
        for speaker_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for f in _audio_files(speaker_dir)
    ]
    if not rows:
        raise DataError(f"{root}: no audio files in speaker folders")
    return rows


def scan_flat(root: Path, pattern: str) -> list[Row]:
    """Audio files whose name matches `pattern`; its named group `speaker` is the label."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--label-pattern {pattern!r}: {exc}") from None
    if "speaker" not in regex.groupindex:
        raise DataError(f"--label-pattern {pattern!r} needs a named group (?P<speaker>...)")
    rows, unmatched = [], 0
    for f in _audio_files(root):
        match = regex.search(f.name)
        if match is None:
            unmatched += 1
            continue
        rows.append(Row(path=f, speaker=match.group("speaker")))
    if not rows:
        raise DataError(f"{root}: no file name matches --label-pattern {pattern!r} ({unmatched} audio files seen)")
    return rows


def discover(data: Path, label_pattern: str | None = None) -> list[Row]:
    """Any supported layout -> rows."""
    if not data.exists():
        raise DataError(f"{data}: no such file or folder")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data}: give a manifest .csv, a folder per speaker, or a folder with --label-pattern")
        return read_manifest(data)
    if label_pattern:
        return scan_flat(data, label_pattern)
    if any(p.is_dir() for p in data.iterdir()):
        return scan_speaker_folders(data)
    raise DataError(
        f"{data}: a flat folder of audio needs --label-pattern, e.g. '^(?P<speaker>[a-z]+)_' or "
        "'_(?P<speaker>[a-z]+)_' for FSDD's {digit}_{speaker}_{index}.wav"
    )


def speaker_counts(rows: list[Row]) -> Counter[str]:
    return Counter(r.speaker for r in rows)
