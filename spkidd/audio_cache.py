"""Decode, resample, trim and cache the audio behind manifest rows.

Decoding (and resampling, and ffmpeg for odd formats) is the slow part of a run, so its result is cached on disk,
keyed by the file's content and the segment, and a second run reads the cache. Features are computed from the
cached audio batch by batch, because augmentation works on waveforms.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np

from spkidd import SAMPLE_RATE
from spkidd.atomic_file import replaced_atomically
from spkidd.audio.decode import AudioDecodeError, AudioStream, load_audio, whole_or_blocks
from spkidd.dataset import Row

log = logging.getLogger(__name__)

CACHE_VERSION = "audio-v2"
"""Part of every entry's key: v2 since MP3s go to ffmpeg and ranges get a pre-roll (v1 had those garbled)."""
MIN_SECONDS = 0.1
_FRAME = SAMPLE_RATE // 100
LONG_S = 60.0
"""A row whose audio is longer than this is handed to evaluate as StoredAudio, never whole (a minute is 3.8 MB as
float32, an hour 230 MB, and evaluate decodes four rows at once)."""
STORED_BLOCK = 10 * SAMPLE_RATE
"""Samples StoredAudio reads at a time."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spkidd" / "audio"


def trim_silence(audio: np.ndarray, floor_db: float = -50.0, below_peak_db: float = 40.0) -> np.ndarray:
    """Cuts leading and trailing silence (10-ms frames quieter than the peak by `below_peak_db`), keeping 100 ms."""
    first, last = sound_bounds(frame_levels(audio), len(audio), floor_db, below_peak_db)
    return audio[first:last]


def frame_levels(audio: np.ndarray) -> np.ndarray:
    """The level (dB) of each whole 10-ms frame: each frame's alone, so that a recording's levels are its blocks'
    levels joined (blocks that start on a frame)."""
    n = len(audio) // _FRAME
    energy = np.square(audio[: n * _FRAME].reshape(n, _FRAME)).mean(axis=1)
    return 10.0 * np.log10(energy + 1e-12)


def sound_bounds(
    levels: np.ndarray, samples: int, floor_db: float = -50.0, below_peak_db: float = 40.0
) -> tuple[int, int]:
    """The samples [first, last) trim_silence keeps of a recording of `samples` samples with these frame_levels."""
    if levels.size == 0:
        return 0, samples
    threshold = max(floor_db, float(levels.max()) - below_peak_db)
    loud = np.flatnonzero(levels > threshold)
    if loud.size == 0:
        return 0, 0
    return max(0, (int(loud[0]) - 10) * _FRAME), min(samples, (int(loud[-1]) + 11) * _FRAME)


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


_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


@dataclass(frozen=True)
class StoredAudio:
    """A long row's audio as the cache keeps it (a 16-bit .npy), read a block at a time as the float32 samples
    AudioCache.load gives, so that it is never held whole. Read with plain file reads: the pages of a memory map
    stay in the process's resident memory once read (reading an hour's entry so peaked at 146 MB, by reads at 38 MB,
    Python's and numpy's own)."""

    path: Path
    samples: int
    offset: int
    """Bytes of the .npy's header."""

    @classmethod
    def of(cls, path: Path) -> StoredAudio:
        """Raises ValueError (or OSError) for anything but a whole 1-D 16-bit .npy, as a damaged entry."""
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = _NPY_HEADERS.get(version)
            if read_header is None:
                raise ValueError(f"{path}: .npy version {version}")
            shape, _, dtype = read_header(handle)
            offset = handle.tell()
        if len(shape) != 1 or dtype != np.dtype(np.int16) or path.stat().st_size != offset + 2 * shape[0]:
            raise ValueError(f"{path}: not a whole 1-D 16-bit array")
        return cls(path, shape[0], offset)

    def read(self, start: int, count: int) -> np.ndarray:
        """Samples [start, start + count) (fewer at the end)."""
        with self.path.open("rb") as handle:
            handle.seek(self.offset + 2 * start)
            return _from_pcm(np.fromfile(handle, dtype=np.int16, count=count))

    def blocks(self) -> Iterator[np.ndarray]:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            while (pcm := np.fromfile(handle, dtype=np.int16, count=STORED_BLOCK)).size:
                yield _from_pcm(pcm)


RowAudio = np.ndarray | StoredAudio
"""A row's audio as AudioCache.open hands it over."""


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

    def _entry(self, row: Row) -> Path | None:
        if self.directory is None:
            return None
        key = self._key(row)
        return self.directory / key[:2] / f"{key}.npy"

    def load(self, row: Row) -> np.ndarray:
        """The row's audio, from the cache when possible; raises AudioDecodeError for unusable audio."""
        cached = self._entry(row)
        if cached is not None and cached.is_file():
            try:
                return _from_pcm(np.load(cached, allow_pickle=False))
            except (OSError, ValueError):
                log.warning("cache entry %s is damaged; decoding again", cached)
        return self._kept(row, load_audio(row.path, row.start, row.end), cached)

    def open(self, row: Row) -> RowAudio:
        """load's samples, a row longer than LONG_S as StoredAudio: its file or span is decoded into the cache a block
        at a time, and read back a block at a time. Without a cache directory, load's."""
        cached = self._entry(row)
        if cached is None:
            return self.load(row)
        if cached.is_file():
            try:
                return _stored(cached)
            except (OSError, ValueError):
                log.warning("cache entry %s is damaged; decoding again", cached)
        return self._streamed(row, cached)

    def _kept(self, row: Row, audio: np.ndarray, cached: Path | None) -> np.ndarray:
        """The decoded row trimmed, refused if too short, and cached."""
        if self.trim:
            audio = trim_silence(audio)
        _check_length(row, len(audio))
        if cached is None:
            return audio
        cached.parent.mkdir(exist_ok=True)
        pcm = _to_pcm(audio)
        with replaced_atomically(cached, suffix=".tmp.npy") as temporary:
            np.save(temporary, pcm, allow_pickle=False)
        return _from_pcm(pcm)

    def _streamed(self, row: Row, cached: Path) -> RowAudio:
        """A row decoded a block at a time (AudioStream, load_audio's samples): kept as load keeps it if it ends within
        LONG_S, else its 16-bit samples written to a temporary file as they come (with each 10-ms frame's level, for
        trim_silence's cut) and the kept stretch of them copied into the cache entry."""
        with AudioStream(row.path, row.start, row.end) as stream:
            audio = whole_or_blocks(iter(stream), int(LONG_S * SAMPLE_RATE))
            if isinstance(audio, np.ndarray):
                _finished(stream)
                return self._kept(row, audio, cached)
            cached.parent.mkdir(exist_ok=True)
            with tempfile.TemporaryFile(dir=cached.parent) as raw:
                levels = _written(audio, raw)
                _finished(stream)
                samples = raw.tell() // 2
                first, last = sound_bounds(levels, samples) if self.trim else (0, samples)
                _check_length(row, last - first)
                with replaced_atomically(cached, suffix=".tmp.npy") as temporary:
                    _copy_as_npy(raw, first, last, temporary)
        return _stored(cached)


def _check_length(row: Row, samples: int) -> None:
    if samples < MIN_SECONDS * SAMPLE_RATE:
        raise AudioDecodeError(f"{row.path}: too short ({samples / SAMPLE_RATE:.2f} s of sound)")


def _to_pcm(audio: np.ndarray) -> np.ndarray:
    return np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)


def _stored(cached: Path) -> RowAudio:
    """A cache entry: StoredAudio if longer than LONG_S, else its samples."""
    stored = StoredAudio.of(cached)
    if stored.samples > LONG_S * SAMPLE_RATE:
        return stored
    return _from_pcm(np.load(cached, allow_pickle=False))


def _finished(stream: AudioStream) -> None:
    """Raises what load_audio raises for the row, damage included (evaluate refuses a damaged file)."""
    damage = stream.finish()
    if damage:
        raise AudioDecodeError(damage)


def _written(blocks: Iterable[np.ndarray], raw: BinaryIO) -> np.ndarray:
    """Writes the blocks to `raw` as 16-bit samples; returns the frame_levels of all of them."""
    levels = []
    rest = np.zeros(0, dtype=np.float32)
    for block in blocks:
        raw.write(_to_pcm(block).tobytes())
        audio = block if rest.size == 0 else np.concatenate([rest, block])
        whole = len(audio) - len(audio) % _FRAME
        levels.append(frame_levels(audio[:whole]))
        rest = audio[whole:]
    return np.concatenate(levels)


def _copy_as_npy(raw: BinaryIO, first: int, last: int, path: Path) -> None:
    """Samples [first, last) of a raw 16-bit file as a .npy (the one np.save writes), a few MB at a time."""
    header = {"descr": np.dtype(np.int16).str, "fortran_order": False, "shape": (last - first,)}
    raw.seek(2 * first)
    left = 2 * (last - first)
    with path.open("wb") as out:
        np.lib.format.write_array_header_1_0(out, header)
        while left:
            data = raw.read(min(left, 1 << 22))
            out.write(data)
            left -= len(data)


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
    for row, audio, error in _decoded(rows, cache.load, on_progress, workers):
        if audio is None:
            result.skipped.append((row, error))
        else:
            result.audio.append(audio)
            result.rows.append(row)
    return result


def opened(
    rows: list[Row], cache: AudioCache, on_progress: Callable[[int], None] | None = None
) -> list[tuple[Row, RowAudio | None, str]]:
    """prepare's rows as AudioCache.open hands them over (a long row as StoredAudio): (row, audio or None, the
    reason it was skipped)."""
    return _decoded(rows, cache.open, on_progress)


Audio = TypeVar("Audio", np.ndarray, RowAudio)


def _decoded(
    rows: list[Row],
    load: Callable[[Row], Audio],
    on_progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> list[tuple[Row, Audio | None, str]]:
    """Every row through `load`, in threads; a row that cannot be used has None and the reason."""

    def one(row: Row) -> tuple[Row, Audio | None, str]:
        try:
            return row, load(row), ""
        except AudioDecodeError as exc:
            return row, None, str(exc)
        except Exception as exc:  # a damaged file must never stop a run
            return row, None, f"{row.path}: {type(exc).__name__}: {exc}"

    out = []
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        for row, audio, error in pool.map(one, rows):
            if audio is None:
                log.debug("skipped %s", error)  # the commands say it once, with the others (skipped_note)
            out.append((row, audio, error))
            if on_progress is not None:
                on_progress(1)
    return out
