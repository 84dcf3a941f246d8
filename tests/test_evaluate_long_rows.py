"""`spkidd evaluate` reads a row longer than a minute from its decode cache a block at a time (StoredAudio), and its
report is the one of the whole-row path (each row decoded whole by AudioCache.load, as evaluate did before): the same
numbers, the same progress, the same skipped rows, from a cold cache and from a warm one."""

from __future__ import annotations

import json
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr

from spkidd import SAMPLE_RATE, evaluation
from spkidd.audio.decode import resample
from spkidd.audio_cache import LONG_S, AudioCache, StoredAudio, frame_levels, opened, trim_silence
from spkidd.dataset import Row, read_manifest
from spkidd.synthetic import SENTENCES, synth_audio
from tests.support.streaming import random_bundle, silence


def _talk(voices: tuple[str, ...], seconds: float) -> np.ndarray:
    """Utterances of `voices` in turn, with pauses, for `seconds`, between 3 s of silence at each end (which the
    cache trims)."""
    turns = [synth_audio(voice, SENTENCES[i]) for i, voice in enumerate(voices)]
    once = np.concatenate([part for turn in turns for part in (turn, silence(0.6))])
    body = np.tile(once, int(seconds * SAMPLE_RATE) // len(once) + 1)[: int(seconds * SAMPLE_RATE)]
    return np.concatenate([silence(3.0), body, silence(3.0)])


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Recordings of 2.5-4 minutes (16-kHz WAV, 44.1-kHz FLAC that is resampled, MP3 through ffmpeg, a FLAC cut
    short), spans of them longer and shorter than a minute (one that ends a little past its recording, one too far
    past it, one of the damaged FLAC that ends before the damage), a short clip, and a voice the model does not
    know."""
    folder = tmp_path_factory.mktemp("long_rows")
    sf.write(folder / "alice.wav", _talk(("alice", "bob"), 150.0), SAMPLE_RATE, subtype="PCM_16")
    bob = _talk(("bob", "alice", "carol"), 230.0)
    sf.write(folder / "bob.flac", soxr.resample(bob, SAMPLE_RATE, 44100), 44100)
    sf.write(folder / "carol.wav", _talk(("carol",), 200.0), SAMPLE_RATE, subtype="PCM_16")
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(folder / "carol.wav"), str(folder / "carol.mp3")],
        check=True,
    )
    sf.write(folder / "cut.flac", _talk(("alice",), 170.0), SAMPLE_RATE)
    whole = (folder / "cut.flac").read_bytes()
    (folder / "cut.flac").write_bytes(whole[: len(whole) * 3 // 4])
    sf.write(folder / "short.wav", synth_audio("bob", SENTENCES[5]), SAMPLE_RATE, subtype="PCM_16")
    lines = [
        "path,speaker,start,end",
        "alice.wav,alice,,",
        "bob.flac,bob,,",
        "carol.mp3,carol,,",
        "cut.flac,alice,,",
        "short.wav,bob,,",
        "alice.wav,alice,10,95.5",
        "bob.flac,bob,20,",
        "bob.flac,bob,40.25,52",
        "carol.mp3,carol,5.3,75.9",
        "alice.wav,alice,33.3,156.04",
        "bob.flac,bob,100,240",
        "cut.flac,alice,5,70",
    ]
    path = folder / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _closed_set(
    cache: AudioCache, rows: list[Row]
) -> tuple[dict[str, Any], list[float], list[int], list[list[float]], dict[float, list[int]]]:
    """The report of score_rows, the progress it told of scoring and of decoding, and its items' probabilities and
    top-1 after EARLY_S, to the bit."""
    bundle = random_bundle(["alice", "bob"])
    scored: list[float] = []
    decoded: list[int] = []
    scoring = evaluation.score_rows(bundle, rows, cache, decoded.append, scored.append)
    probs = [item.probs.tolist() for item in scoring.scored]
    return evaluation.closed_set_report(bundle, scoring), scored, decoded, probs, scoring.early


def _open_set(cache: AudioCache, rows: list[Row]) -> tuple[dict[str, Any], list[str], list[float], list[list[float]]]:
    bundle = random_bundle(["alice", "bob"])
    scored: list[float] = []
    items, skipped = evaluation.score_items(bundle, rows, cache, on_scored=scored.append)
    probs = [item.probs.tolist() + item.scores.tolist() for _, item in items]
    return evaluation.open_set_report(bundle, items, ["carol"]), skipped, scored, probs


@pytest.fixture(scope="module")
def whole_closed_set(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The report as evaluate gave it before: every row decoded whole (AudioCache.load), however long."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AudioCache, "open", AudioCache.load)
        return _closed_set(AudioCache(tmp_path_factory.mktemp("whole_cache")), read_manifest(manifest))


def test_the_manifest_has_long_rows_that_come_as_stored_audio(manifest: Path, tmp_path: Path) -> None:
    cache = AudioCache(tmp_path / "cache")
    rows = read_manifest(manifest)
    audio = {row.line.split(":")[-1]: audio for row, audio, _ in opened(rows, cache)}

    long = sorted(line for line, got in audio.items() if isinstance(got, StoredAudio))
    assert long == ["10", "11", "13", "2", "3", "4", "7", "8"], "the whole recordings and the spans past a minute"
    assert audio["5"] is None and audio["12"] is None, "the damaged file, and a span past the end of its file"
    assert all(isinstance(audio[line], np.ndarray) and len(audio[line]) <= LONG_S * SAMPLE_RATE for line in "69")


@pytest.mark.parametrize("warm", [False, True])
def test_the_closed_set_report_of_long_rows_read_a_block_at_a_time_is_the_whole_rows_one(
    manifest: Path, tmp_path: Path, whole_closed_set: Any, warm: bool
) -> None:
    cache = AudioCache(tmp_path / "cache")
    rows = read_manifest(manifest)
    if warm:
        _closed_set(cache, rows)

    report, *rest = _closed_set(cache, rows)

    whole_report, *whole_rest = whole_closed_set
    assert json.dumps(report) == json.dumps(whole_report), "report.json's text (NaN is not equal to itself)"
    assert rest == whole_rest
    assert report["n"] == 8 and report["skipped"] == 2
    assert "cut.flac: damaged (truncated or corrupt): the audio stops at" in report["skipped_reasons"][0]
    assert "bob.flac: end 240.000 s is past the end (236.000 s)" in report["skipped_reasons"][1]
    assert report["unknown_speakers"] == {"carol": 2}


def test_the_open_set_report_of_long_rows_is_the_whole_rows_one(manifest: Path, tmp_path: Path) -> None:
    rows = read_manifest(manifest)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AudioCache, "open", AudioCache.load)
        whole = _open_set(AudioCache(tmp_path / "whole"), rows)

    blocks = _open_set(AudioCache(tmp_path / "blocks"), rows)

    assert json.dumps(blocks) == json.dumps(whole)
    assert blocks[0]["stranger_items"] == 2 and len(blocks[1]) == 2


def test_a_long_row_is_read_back_as_the_cache_keeps_it(manifest: Path, tmp_path: Path) -> None:
    """The blocks are the whole decode trimmed (trim_silence's frames measured block by block) and rounded to the
    cache's 16 bits: what AudioCache.load gives."""
    row = Row(manifest.parent / "bob.flac", "bob")
    stored = AudioCache(tmp_path / "blocks").open(row)
    assert isinstance(stored, StoredAudio)

    whole = AudioCache(tmp_path / "whole").load(row)

    assert np.array_equal(np.concatenate(list(stored.blocks())), whole)
    assert np.array_equal(stored.read(1000, 5000), whole[1000:6000])
    decoded = resample(sf.read(row.path, dtype="float32")[0], 44100)
    assert 0 < len(decoded) - len(whole) < 7 * SAMPLE_RATE, "the silence at both ends was trimmed"
    assert len(trim_silence(decoded)) == len(whole)
    assert np.array_equal(
        frame_levels(decoded), np.concatenate([frame_levels(decoded[:16000]), frame_levels(decoded[16000:])])
    )


@pytest.mark.parametrize(
    ("name", "start", "end"), [("bob.flac", 10.5, 230.5), ("carol.mp3", 5.3, 195.9), ("alice.wav", 33.3, 156.04)]
)
def test_a_long_span_is_read_back_as_the_cache_keeps_it(
    manifest: Path, tmp_path: Path, name: str, start: float, end: float
) -> None:
    """A span decoded a block at a time from its start (AudioStream's range: a resampled FLAC, an MP3 with ffmpeg's
    pre-roll, a WAV span that ends just past its recording) is what AudioCache.load gives for it."""
    row = Row(manifest.parent / name, name.split(".")[0], start, end)
    stored = AudioCache(tmp_path / "blocks").open(row)
    assert isinstance(stored, StoredAudio)

    whole = AudioCache(tmp_path / "whole").load(row)

    assert np.array_equal(np.concatenate(list(stored.blocks())), whole)
    assert LONG_S * SAMPLE_RATE < len(whole) <= (end - start) * SAMPLE_RATE


@pytest.mark.parametrize(
    ("name", "start", "end", "seconds"),
    [("bob.flac", 0.0, None, 236.0), ("bob.flac", 10.5, 230.5, 220.0), ("carol.mp3", 5.3, 195.9, 190.6)],
)
def test_a_long_row_is_never_held_whole(
    manifest: Path, tmp_path: Path, name: str, start: float, end: float | None, seconds: float
) -> None:
    """Python's allocations (numpy's included) at their peak while evaluate decodes and scores a row of 3-4 minutes
    (a whole 44.1-kHz FLAC, a span of it, a span of an MP3): less than the row's float32 from a cold cache (its first
    minute is held to tell whether it is long, and 10 s of 44.1-kHz blocks at a time; 11.4, 11.1 and 10.7 MB), a few
    blocks from a warm one (3.1 MB). Decoded whole, they were 41.8, 39.0 and 42.7 MB cold, the FLAC's 36.8 MB warm."""
    rows = [Row(manifest.parent / name, name.split(".")[0], start, end)]
    cache = AudioCache(tmp_path / "cache")
    bundle = random_bundle(["alice", "bob", "carol"])
    row_bytes = 4 * seconds * SAMPLE_RATE
    peaks = []
    for _ in ("cold", "warm"):
        tracemalloc.start()
        try:
            assert len(evaluation.score_rows(bundle, rows, cache).scored) == 1
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()

    assert peaks[0] < row_bytes, f"cold: {peaks[0] / 1e6:.1f} MB"
    assert peaks[1] < row_bytes / 3, f"warm: {peaks[1] / 1e6:.1f} MB"
