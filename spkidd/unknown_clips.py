"""Keeping the audio of utterances answered `unknown`, in a bounded folder (off by default).

A new household member is first heard as `unknown`; these clips, from the user's own microphone, are what
`spkidd enroll` can later learn them from. Each clip is a 16-kHz WAV with a JSON sidecar holding the decision
(top candidates, scores, times). The folder is bounded by clip count and size: the oldest clips go first, and
only files this module wrote (by their name pattern) are ever deleted. Voices are personal data: the folder spkidd
creates is 0700 and every file 0600, whatever the umask.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from spkidd import SAMPLE_RATE
from spkidd.events import Identification

log = logging.getLogger(__name__)

CLIP_NAME = re.compile(r"^\d{8}T\d{6}\.\d{3}Z_[A-Za-z0-9_-]+\.wav$")
"""The names this module writes: a UTC time stamp (so names sort by age) and the utterance id."""
_STAMP = "%Y%m%dT%H%M%S.%f"


@dataclass(frozen=True)
class UnknownClipSettings:
    """`folder`: where clips go; unset = off. `max_clips` / `max_mb`: bounds of the folder, oldest out first.
    `min_speech_s`: shorter utterances are not worth enrolling from and are not kept. `min_interval_s`: no clip is
    kept this soon (wall clock) after the newest one, so hours of a TV's stranger voices (530 clips an hour) do
    not push a new household member's clips out of the folder within minutes, nor write 90 MB an hour."""

    folder: Path | None = None
    max_clips: int = 200
    max_mb: float = 100.0
    min_speech_s: float = 1.0
    min_interval_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_clips < 1:
            raise ValueError(f"unknown_clips.max_clips must be at least 1, not {self.max_clips}")
        if self.max_mb <= 0:
            raise ValueError(f"unknown_clips.max_mb must be positive, not {self.max_mb}")
        if self.min_speech_s < 0:
            raise ValueError(f"unknown_clips.min_speech_s must not be negative, not {self.min_speech_s}")
        if self.min_interval_s < 0:
            raise ValueError(f"unknown_clips.min_interval_s must not be negative, not {self.min_interval_s}")

    @property
    def enabled(self) -> bool:
        return self.folder is not None


def clip_stem(event: Identification, newest: datetime | None) -> str:
    """The new clip's name: its time stamp (see clip_time) and the utterance id."""
    stamp = clip_time(newest).strftime(_STAMP)[:-3] + "Z"
    return f"{stamp}_{event.utterance_id}"


def clip_time(newest: datetime | None) -> datetime:
    """Now, or a millisecond after the newest kept clip when the clock was set back since it was written (NTP
    correcting a clock that ran ahead, a board without a battery-backed clock): names must keep sorting in the
    order the clips were written, or the trim takes every new clip for the oldest and deletes it at once."""
    now = datetime.now(UTC)
    return now if newest is None else max(now, newest + timedelta(milliseconds=1))


def newest_clip_time(clips: list[Path]) -> datetime | None:
    """When the newest of the kept clips (oldest first, as kept_clips lists them) was written, by its name; None
    without one."""
    try:
        return datetime.strptime(clips[-1].name[: len("YYYYmmddTHHMMSS.fff")], _STAMP).replace(tzinfo=UTC)
    except (IndexError, ValueError):  # no clip yet, or a name of the pattern that is no date (not ours)
        return None


def too_soon(settings: UnknownClipSettings, newest: datetime | None) -> bool:
    """Whether the newest clip was kept less than `min_interval_s` ago. A newest clip stamped in the future (the
    clock was set back since) does not count: it would hold every new clip back until the clock caught up."""
    if newest is None or settings.min_interval_s <= 0:
        return False
    elapsed = (datetime.now(UTC) - newest).total_seconds()
    return 0 <= elapsed < settings.min_interval_s


def save_unknown_clip(settings: UnknownClipSettings, audio: np.ndarray, event: Identification) -> Path | None:
    """Writes the sidecar, then the clip (16-kHz int16 samples), each atomically, so a reader never sees half a file
    or a clip without its decision; then trims the folder. Returns the WAV's path, or None when the utterance is too
    short to keep or comes too soon after the last clip kept. A disk without room is one OSError, and nothing of the
    clip is left. The folder is listed once: the trim takes that listing with the new clip (a clip another stream
    writes meanwhile is counted from the next trim on). Blocking: call it off the event loop."""
    if settings.folder is None or event.speech_s < settings.min_speech_s or len(audio) == 0:
        return None
    clips = kept_clips(settings.folder)
    newest = newest_clip_time(clips)
    if too_soon(settings, newest):
        return None
    _private_folder(settings.folder)
    wav = settings.folder / f"{clip_stem(event, newest)}.wav"
    sidecar = {**event.to_dict(), "audio_s": round(len(audio) / SAMPLE_RATE, 3)}
    try:
        _write_private(wav.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
        _write_private(wav, _wav_bytes(audio))
    except OSError:
        wav.with_suffix(".json").unlink(missing_ok=True)
        raise
    if wav in trim_folder(settings, sorted([*clips, wav])):
        log.warning(
            "unknown clips: the clip of %s is larger than max_mb = %g on its own; not kept",
            event.utterance_id,
            settings.max_mb,
        )
        return None
    return wav


def _wav_bytes(audio: np.ndarray) -> bytes:
    """The WAV encoded in memory: soundfile writing to a file that meets a full disk prints a traceback per failed
    write and then fails with an AssertionError, not an OSError."""
    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


def _write_private(path: Path, data: bytes) -> None:
    """`data` as `path`, atomically: a partial file first, renamed once complete, removed whatever fails."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with _private_file(partial) as out:
            out.write(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _private_folder(folder: Path) -> None:
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)


def _private_file(path: Path) -> BinaryIO:
    """A new file readable by its owner only: created 0600, never briefly wider."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return os.fdopen(fd, "wb")


def kept_clips(folder: Path) -> list[Path]:
    """The clips this module wrote, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if CLIP_NAME.match(p.name))


def trim_folder(settings: UnknownClipSettings, listed: list[Path]) -> list[Path]:
    """Deletes the oldest of the `listed` clips (oldest first, as kept_clips lists them) with their sidecars until
    both bounds hold; returns what was deleted."""
    sizes = _sizes(listed)
    clips = list(sizes)
    total, limit = sum(sizes.values()), settings.max_mb * 1e6
    removed = []
    while clips and (len(clips) > settings.max_clips or total > limit):
        oldest = clips.pop(0)
        oldest.unlink(missing_ok=True)
        oldest.with_suffix(".json").unlink(missing_ok=True)
        total -= sizes[oldest]
        removed.append(oldest)
    if removed:  # once the folder is full, every clip kept removes one: not worth a line of INFO each time
        log.debug("unknown clips: removed the %d oldest to stay within the folder's bounds", len(removed))
    return removed


def _sizes(clips: list[Path]) -> dict[Path, int]:
    """Each clip's bytes with its sidecar's, in the order given; a clip deleted since it was listed (the page
    enrolled a voice from it) is left out, or it would count against max_clips."""
    sizes = {}
    for clip in clips:
        try:
            sizes[clip] = clip.stat().st_size + _size(clip.with_suffix(".json"))
        except FileNotFoundError:
            continue
    return sizes


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
