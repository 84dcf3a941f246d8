"""A wall clock set back while the daemon runs for months (NTP correcting a clock that ran ahead, a board without a
battery-backed clock): what is named or ordered by the wall clock must keep working."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from spkidd.events import Identification, SpeechActivity
from spkidd.unknown_clips import UnknownClipSettings, kept_clips, save_unknown_clip
from spkidd.web.live import TIMELINE_S, LiveHub


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


def _utterance(hub: LiveHub, n: int, speaker: str) -> None:
    """One utterance of a second, named `speaker`: one turn on the page's timeline."""
    utterance_id = f"room-{n:06d}"
    hub.handle(SpeechActivity("room", utterance_id, True, 0.0))
    hub.handle(Identification("room", utterance_id, "final", speaker, 0.9, {speaker: 0.9}, True, 0.0, 1.0, 1.0))
    hub.handle(SpeechActivity("room", utterance_id, False, 1.0))


def test_the_live_timeline_drops_turns_stamped_before_the_clock_was_set_back() -> None:
    """They would otherwise stay an hour (until the clock caught up), and hold every later turn behind them."""
    clock = [1_800_000_000.0]
    hub = LiveHub(["room"], clock=lambda: clock[0])
    _utterance(hub, 1, "alice")
    clock[0] -= 3600.0
    _utterance(hub, 2, "bob")
    clock[0] += 60.0
    _utterance(hub, 3, "carol")
    assert [s["speaker"] for s in hub.snapshot()["sources"]["room"]["timeline"]] == ["bob", "carol"]
    clock[0] += TIMELINE_S
    assert [s["speaker"] for s in hub.snapshot()["sources"]["room"]["timeline"]] == ["carol"]
