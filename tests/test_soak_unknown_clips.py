"""The kept `unknown` clips' folder in the steady state of a long run: full, so every clip kept removes the oldest.
That rotation is routine, so it costs the log nothing at INFO: a guest talking for an hour was two INFO lines per
utterance (about 200 kB an hour of unknown speech in the soak), now one (the pipeline's `kept ... as PATH`)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from spkidd.events import Identification
from spkidd.unknown_clips import UnknownClipSettings, kept_clips, save_unknown_clip


def test_a_full_folder_rotates_its_clips_without_a_line_of_info(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = UnknownClipSettings(folder=tmp_path, max_clips=3)
    audio = (np.random.default_rng(0).standard_normal(24000) * 3000).astype(np.int16)
    caplog.set_level(logging.INFO, "spkidd.unknown_clips")
    for n in range(10):
        event = Identification("room", f"room-{n:06d}", "identified", "unknown", 0.3, {}, True, 0.0, 1.5, 1.5)
        assert save_unknown_clip(settings, audio, event) is not None
    assert [p.name[-15:] for p in kept_clips(tmp_path)] == [f"room-{n:06d}.wav" for n in (7, 8, 9)]
    assert caplog.records == []
