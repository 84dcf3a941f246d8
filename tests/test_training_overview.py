"""Before training, `spkidd train` shows whom the model will know and with how much audio, so that a wrongly named
folder or a --label-pattern that cuts the wrong part of the names shows before the model is trained on it; after it,
the summary and the training curve say which epoch's model was kept."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console

from spkidd import SAMPLE_RATE
from spkidd.audio_cache import Prepared
from spkidd.dataset import Row
from spkidd.plots import pyplot
from train.run import SHOWN_SPEAKERS, _accuracy_row, _print_speakers, _recordings, _warn_small_speakers, speaker_audio
from train.trainer_base import HELD_OUT, EpochRecord, history_figure


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


def _history(*val_accs: float) -> list[EpochRecord]:
    return [EpochRecord(i + 1, 1.0 / (i + 1), 0.5, acc, 0.1, 1e-3) for i, acc in enumerate(val_accs)]


def test_the_training_curve_marks_the_model_kept_even_from_before_the_first_epoch() -> None:
    """A 3-epoch run kept the heads as they started (0.82), yet its curve showed only epochs scoring 0.07-0.44, on
    an axis of quarter epochs."""
    figure = history_figure(_history(0.43, 0.07, 0.44), kept=(0, 0.82))
    accuracy = figure.axes[1]
    assert [t.get_text() for t in accuracy.get_legend().get_texts()] == [
        "train",
        "validation",
        "model kept: before training, 0.820",
    ]
    star = accuracy.get_lines()[-1]
    assert (list(star.get_xdata()), list(star.get_ydata())) == ([0], [0.82])
    for axes in figure.axes:
        ticks = [tick for tick in axes.get_xticks() if axes.get_xlim()[0] <= tick <= axes.get_xlim()[1]]
        assert ticks and all(float(tick).is_integer() for tick in ticks), ticks
    pyplot().close(figure)


def test_the_summary_says_what_epoch_0_is() -> None:
    label, value = _accuracy_row({"best_epoch": 0, "best_val_acc": 0.8221, "validated_on": HELD_OUT})
    assert label == "best validation accuracy"
    assert value == (
        "0.8221 (epoch 0: the pretrained encoder and the speakers' mean voices, before training; no epoch did better)"
    )
    assert _accuracy_row({"best_epoch": 4, "best_val_acc": 0.9674})[1] == "0.9674 (epoch 4)"


def test_pieces_of_a_long_recording_are_not_counted_as_files() -> None:
    long = Path("meeting.mp3")
    pieces = [Row(long, "alice", 0.0, 10.0), Row(long, "bob", 14.1, 24.7), Row(Path("b.wav"), "bob")]
    assert _recordings(pieces) == "3 pieces of 2 file(s)"
    assert _recordings(pieces[1:]) == "2 files"
