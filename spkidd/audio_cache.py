"""Decode, resample, trim and cache the audio behind manifest rows.

Decoding (and resampling, and ffmpeg for odd formats) is the slow part of a run, so its result is cached on disk,
keyed by the file's content and the segment, and a second run reads the cache. Features are computed from the
cached audio batch by batch, because augmentation works on waveforms.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spkidd import SAMPLE_RATE
from spkidd.atomic_file import replaced_atomically
from spkidd.audio.decode import AudioDecodeError, load_audio
from spkidd.dataset import Row

log = logging.getLogger(__name__)

CACHE_VERSION = "audio-v2"
"""Part of every entry's key: v2 since MP3s go to ffmpeg and ranges get a pre-roll (v1 had those garbled)."""
MIN_SECONDS = 0.1
_FRAME = SAMPLE_RATE // 100


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spkidd" / "audio"


def trim_silence(audio: np.ndarray, floor_db: float = -50.0, below_peak_db: float = 40.0) -> np.ndarray:
    """Cuts leading and trailing silence (10-ms frames quieter than the peak by `below_peak_db`), keeping 100 ms."""
    n = len(audio) // _FRAME
    if n == 0:
        return audio
    energy = np.square(audio[: n * _FRAME].reshape(n, _FRAME)).mean(axis=1)
    level = 10.0 * np.log10(energy + 1e-12)
    threshold = max(floor_db, float(level.max()) - below_peak_db)
    loud = np.flatnonzero(level > threshold)
    if loud.size == 0:
        return audio[:0]
    first = max(0, (loud[0] - 10) * _FRAME)
    last = min(len(audio), (loud[-1] + 11) * _FRAME)
    return audio[first:last]


def _content_hash(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Prepared:
    """Decoded rows (16 kHz float32, trimmed) and what was skipped, with the reason."""

    audio: list[np.ndarray] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    skipped: list[tuple[Row, str]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return sum(len(a) for a in self.audio) / SAMPLE_RATE


class AudioCache:
    def __init__(self, directory: Path | None, trim: bool = True) -> None:
        self.directory = directory
        self.trim = trim
        self._hashes: dict[Path, tuple[tuple[int, int], str]] = {}
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)

    def _key(self, row: Row) -> str:
        spec = f"{CACHE_VERSION}|{self._file_hash(row.path)}|{row.start}|{row.end}|{self.trim}|{SAMPLE_RATE}"
        return hashlib.sha1(spec.encode()).hexdigest()

    def _file_hash(self, path: Path) -> str:
        """Each file's content hash once while its size and time stamp stay: 600 manifest rows cut from one hour's
        FLAC hashed its 57 MB once a row, 11 s of a run whose every row came from the cache (now 0.25 s)."""
        stat = path.stat()
        seen = (stat.st_size, stat.st_mtime_ns)
        known = self._hashes.get(path)
        if known is not None and known[0] == seen:
            return known[1]
        digest = _content_hash(path)
        self._hashes[path] = (seen, digest)
        return digest

    def load(self, row: Row) -> np.ndarray:
        """The row's audio, from the cache when possible; raises AudioDecodeError for unusable audio."""
        cached = None
        if self.directory is not None:
            key = self._key(row)
            cached = self.directory / key[:2] / f"{key}.npy"
            if cached.is_file():
                try:
                    return _from_pcm(np.load(cached, allow_pickle=False))
                except (OSError, ValueError):
                    log.warning("cache entry %s is damaged; decoding again", cached)
        audio = load_audio(row.path, row.start, row.end)
        if self.trim:
            audio = trim_silence(audio)
        if len(audio) < MIN_SECONDS * SAMPLE_RATE:
            raise AudioDecodeError(f"{row.path}: too short ({len(audio) / SAMPLE_RATE:.2f} s of sound)")
        if cached is None:
            return audio
        cached.parent.mkdir(exist_ok=True)
        pcm = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
        with replaced_atomically(cached, suffix=".tmp.npy") as temporary:
            np.save(temporary, pcm, allow_pickle=False)
        return _from_pcm(pcm)


def _from_pcm(pcm: np.ndarray) -> np.ndarray:
    """The cache keeps 16-bit samples, and a row decoded now is handed over as they are, as the next run will read
    them: a first run trained on the unrounded decode and a second on the cache's, and the household benchmark named
    one clip of 300 differently (98.00% cold, 98.33% warm)."""
    return pcm.astype(np.float32) / 32768.0


def skipped_note(reasons: list[str], rows: list[Row], most: int = 10) -> str:
    """The files or manifest rows a command could not use (`rows` the ones it was given), said once after its
    progress bar: the first `most` with their reason. Rows of a manifest are pieces of recordings (hundreds may cut
    one file), so they are counted as rows, not files."""
    what = "manifest row(s)" if any(row.line for row in rows) else "file(s)"
    lines = [f"skipped {len(reasons)} unusable {what}:", *(f"  {reason}" for reason in reasons[:most])]
    if len(reasons) > most:
        lines.append(f"  ... and {len(reasons) - most} more")
    return "\n".join(lines)


def prepare(
    rows: list[Row],
    cache: AudioCache,
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> Prepared:
    """Decodes every row (threads; soundfile and ffmpeg release the GIL), skipping bad files with a warning."""
    result = Prepared()

    def one(row: Row) -> tuple[Row, np.ndarray | None, str]:
        try:
            return row, cache.load(row), ""
        except AudioDecodeError as exc:
            return row, None, str(exc)
        except Exception as exc:  # a damaged file must never stop a run
            return row, None, f"{row.path}: {type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for row, audio, error in pool.map(one, rows):
            if audio is None:
                log.debug("skipped %s", error)  # the commands say it once, with the others (skipped_note)
                result.skipped.append((row, error))
            else:
                result.audio.append(audio)
                result.rows.append(row)
            if on_progress is not None:
                on_progress(1)
    return result
