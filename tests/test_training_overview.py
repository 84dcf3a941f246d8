"""Before training, `spkidd train` shows whom the model will know and with how much audio, so that a wrongly named
folder or a --label-pattern that cuts the wrong part of the names shows before the model is trained on it."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console

from spkidd import SAMPLE_RATE
from spkidd.audio_cache import Prepared
from spkidd.dataset import Row
from train.run import SHOWN_SPEAKERS, _print_speakers, _warn_small_speakers, speaker_audio


def _prepared(seconds_by_file: dict[str, list[float]]) -> Prepared:
    prepared = Prepared()
    for speaker, lengths in seconds_by_file.items():
        for i, seconds in enumerate(lengths):
            prepared.rows.append(Row(path=Path(f"{speaker}_{i}.wav"), speaker=speaker))
            prepared.audio.append(np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32))
    return prepared


def _shown(draw: Callable[..., None], *args: object) -> str:
    out = io.StringIO()
    draw(*args, Console(file=out, width=300))
    return out.getvalue()


def test_every_speaker_is_listed_with_files_and_seconds() -> None:
    speakers = speaker_audio(_prepared({"[b]Nina": [2.0, 3.5], "theo": [1.25] * 4}))
    table = _shown(_print_speakers, speakers)
    assert "2 speakers:" in table
    assert [line.split("│")[1:4] for line in table.splitlines() if "│" in line] == [
        [" [b]Nina ", "     2 ", "              5.5 "],
        [" theo    ", "     4 ", "              5.0 "],
    ]


def test_a_large_set_shows_the_speakers_with_the_least_audio() -> None:
    speakers = speaker_audio(_prepared({f"s{i:03d}": [1.0 + i] for i in range(SHOWN_SPEAKERS + 5)}))
    table = _shown(_print_speakers, speakers)
    assert f"the {SHOWN_SPEAKERS} of {SHOWN_SPEAKERS + 5} speakers with the least audio" in table
    assert "s000" in table and f"s{SHOWN_SPEAKERS - 1:03d}" in table and f"s{SHOWN_SPEAKERS:03d}" not in table


def test_a_few_scant_speakers_are_warned_about_by_name() -> None:
    speakers = speaker_audio(_prepared({"alice": [3.0] * 4, "zoe": [0.9]}))
    shown = _shown(_warn_small_speakers, speakers, None)
    assert (
        shown.strip() == "warning: speaker 'zoe' has only 1 clip(s), 0.9 s of sound; expect it to be recognised poorly"
    )


def test_a_pattern_that_makes_every_file_a_speaker_is_one_warning_that_points_at_it() -> None:
    """`(?P<speaker>\\w+)` on FSDD's `0_george_5.wav` made 151 speakers of 151 files: 151 warnings, one per file."""
    speakers = speaker_audio(_prepared({f"{digit}_george_5": [0.4] for digit in range(10)}))
    shown = _shown(_warn_small_speakers, speakers, r"(?P<speaker>\w+)")
    assert shown.count("warning:") == 1
    assert "10 of 10 speakers have fewer than 3 clips and under 5 s of sound each ('0_george_5'," in shown
    assert r"Every file became a speaker of its own: does --label-pattern '(?P<speaker>\w+)' capture" in shown
