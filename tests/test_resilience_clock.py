"""A wall clock set back while the daemon runs for months (NTP correcting a clock that ran ahead, a board without a
battery-backed clock): what is named or ordered by the wall clock must keep working."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from spkidd.events import Identification
from spkidd.unknown_clips import UnknownClipSettings, kept_clips, save_unknown_clip


def _unknown(utterance_id: str) -> Identification:
    return Identification("room", utterance_id, "identified", "unknown", 0.3, {}, True, 0.0, 2.0, 2.0)


def _speech(seconds: float) -> np.ndarray:
    return (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 3000).astype(np.int16)


def test_clips_kept_after_the_clock_was_set_back_are_not_deleted_as_the_oldest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = UnknownClipSettings(folder=tmp_path, max_clips=3)
    for i in range(3):  # kept while the clock ran a day ahead
        written = save_unknown_clip(settings, _speech(1.5), _unknown(f"room-00000{i}"))
        assert written is not None
        ahead = tmp_path / f"20991231T12000{i}.000Z_room-00000{i}.wav"
        written.rename(ahead)
        written.with_suffix(".json").rename(ahead.with_suffix(".json"))
    caplog.set_level(logging.INFO, "spkidd.unknown_clips")
    new = [save_unknown_clip(settings, _speech(1.5), _unknown(f"room-00001{i}")) for i in range(2)]
    assert all(path is not None and path.is_file() and path.with_suffix(".json").is_file() for path in new)
    assert [p.name[-15:] for p in kept_clips(tmp_path)] == ["room-000002.wav", "room-000010.wav", "room-000011.wav"]
    assert "larger than max_mb" not in caplog.text
