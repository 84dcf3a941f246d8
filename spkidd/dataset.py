"""Dataset layouts -> manifest rows (path, speaker, start, end).

Three layouts are understood: a manifest CSV (`path,speaker[,start,end]`, paths relative to the CSV), a folder per
speaker (VoxCeleb, LibriSpeech), and a flat folder whose file names carry the speaker (`--label-pattern`).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from spkidd.terminal import warning

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
    line: str = ""
    """Where a manifest lists the row (`manifest.csv:12`); empty for a row found in a folder."""

    @property
    def key(self) -> str:
        return f"{self.path}|{self.start}|{self.end}"

    def said(self, reason: str) -> str:
        """A reason the row was skipped, after its manifest line: a manifest that cuts long recordings into pieces
        has hundreds of rows of one file, and `podcast.mp3: no audio samples` did not say which."""
        return f"{self.line}: {reason}" if self.line else reason


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
            rows.append(Row(path=path, speaker=record["speaker"].strip(), start=start, end=end, line=where))
    if not rows:
        raise DataError(f"{csv_path}: the manifest lists no audio")
    return rows


def _hidden(path: Path, root: Path) -> bool:
    """A name starting with a dot below `root`: `.DS_Store`, macOS's `._clip.wav` resource forks (not audio, though
    named so), `.git` or `.Trash` folders; never a speaker or a recording."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def audio_files(folder: Path) -> list[Path]:
    """The audio files below `folder`, sorted; hidden files and folders left out."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS and not _hidden(p, folder)
    )


def _subfolders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p, root))


@dataclass
class Discovery:
    """The labelled audio found, and what was left out of it, said so that a person can tell a folder they meant to
    train on from one that is ignored."""

    rows: list[Row]
    left_out: list[str] = field(default_factory=list)


def scan_speaker_folders(root: Path) -> Discovery:
    """`root/<speaker>/**/<audio>`: every audio file below a top-level folder belongs to that speaker; a speaker
    folder without audio, and audio beside the speaker folders, are left out and said so."""
    rows: list[Row] = []
    empty: list[str] = []
    for speaker_dir in _subfolders(root):
        files = audio_files(speaker_dir)
        rows += [Row(path=f, speaker=speaker_dir.name) for f in files]
        if not files:
            empty.append(speaker_dir.name)
    if not rows:
        raise DataError(f"{root}: no audio files in speaker folders")
    left_out = []
    if empty:
        left_out.append(f"{len(empty)} speaker folder(s) without audio files: {', '.join(empty)}")
    loose = [p.name for p in audio_files(root) if p.parent == root]
    if loose:
        left_out.append(
            f"{len(loose)} audio file(s) in {root} itself, outside the speaker folders (e.g. {loose[0]}): "
            "a speaker's recordings go in a folder named after the speaker"
        )
    return Discovery(rows, left_out)


def scan_flat(root: Path, pattern: str) -> Discovery:
    """Audio files whose name matches `pattern`; its named group `speaker` is the label."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--label-pattern '{pattern}': {exc}") from None
    if "speaker" not in regex.groupindex:
        raise DataError(f"--label-pattern '{pattern}' needs a named group (?P<speaker>...)")
    rows: list[Row] = []
    unmatched: list[str] = []
    for f in audio_files(root):
        match = regex.search(f.name)
        if match is None:
            unmatched.append(f.name)
            continue
        rows.append(Row(path=f, speaker=match.group("speaker")))
    if not rows:
        raise DataError(f"{root}: no file name matches --label-pattern '{pattern}' ({len(unmatched)} audio files seen)")
    left_out = []
    if unmatched:
        left_out.append(
            f"{len(unmatched)} audio file(s) whose names do not match --label-pattern '{pattern}' (e.g. {unmatched[0]})"
        )
    return Discovery(rows, left_out)


def discover(data: Path, label_pattern: str | None = None) -> Discovery:
    """Any supported layout -> rows, and what was left out."""
    if not data.exists():
        raise DataError(f"{data}: no such file or folder")
    if data.is_file():
        if data.suffix.lower() != ".csv":
            raise DataError(f"{data}: give a manifest .csv, a folder per speaker, or a folder with --label-pattern")
        return Discovery(read_manifest(data))
    if label_pattern:
        return scan_flat(data, label_pattern)
    if _subfolders(data):
        return scan_speaker_folders(data)
    raise DataError(
        f"{data}: a flat folder of audio needs --label-pattern, e.g. '^(?P<speaker>[a-z]+)_' or "
        "'_(?P<speaker>[a-z]+)_' for FSDD's {digit}_{speaker}_{index}.wav"
    )


def discover_and_tell(data: Path, label_pattern: str | None, console: Console) -> list[Row]:
    """`discover`'s rows, with a warning for each thing in `data` that was left out."""
    found = discover(data, label_pattern)
    for note in found.left_out:
        warning(console, f"{data}: left out {note}")
    return found.rows


def speaker_counts(rows: list[Row]) -> Counter[str]:
    return Counter(r.speaker for r in rows)
