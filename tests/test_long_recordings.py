"""Long recordings through `identify`, `evaluate` and `train`: each pass over the audio made once, clear errors."""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from spkidd import SAMPLE_RATE, evaluation
from spkidd.audio.base import CHUNK_SAMPLES
from spkidd.audio_cache import AudioCache
from spkidd.dataset import Row
from spkidd.enrollment import NO_SPEECH
from spkidd.identify import identify_audio
from spkidd.synthetic import synth_audio
from spkidd.vad import GateEvent, SpeechGate
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.streaming import random_bundle, silence, write_wav


@pytest.fixture
def gate_chunks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The start of every chunk any speech gate is given, in order."""
    pushed: list[float] = []
    push = SpeechGate.push

    def counting(gate: SpeechGate, samples: np.ndarray, start_s: float) -> list[GateEvent]:
        pushed.append(start_s)
        return push(gate, samples, start_s)

    monkeypatch.setattr(SpeechGate, "push", counting)
    return pushed


def _chunks(audio: np.ndarray) -> int:
    return -(-len(audio) // CHUNK_SAMPLES)


def test_a_long_recording_goes_through_the_speech_gate_once(gate_chunks: list[float]) -> None:
    """identify ran the gate over a long recording twice, once to tell whether it holds speech and once for the
    timeline (for an hour: 2 s more and 390 MB more peak memory, the speech copied out as float32)."""
    parts = [synth_audio(voice, HELD_OUT_SENTENCES[0]) for voice in ("alice", "bob")]
    audio = np.concatenate([parts[0], silence(1.0), parts[1], silence(1.0)])
    assert len(audio) > 1.5 * 3.0 * SAMPLE_RATE, "long enough for a timeline"

    result = identify_audio(random_bundle(["alice", "bob"]), Path("talk.wav"), audio, 3.0)

    assert result.timeline and not result.error
    assert len(gate_chunks) == _chunks(audio)


def test_a_long_silent_recording_has_no_speech_after_one_pass_of_the_gate(gate_chunks: list[float]) -> None:
    audio = np.random.default_rng(0).normal(0.0, 1e-4, 12 * SAMPLE_RATE).astype(np.float32)

    result = identify_audio(random_bundle(["alice", "bob"]), Path("night.wav"), audio, 3.0)

    assert (result.error, result.timeline, result.speaker) == (NO_SPEECH, [], "")
    assert len(gate_chunks) == _chunks(audio)


@pytest.mark.parametrize("open_set", [False, True])
def test_evaluate_holds_a_few_decoded_recordings_at_a_time_not_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, open_set: bool
) -> None:
    """evaluate decoded every row before it scored the first: a manifest of whole hour-long recordings held them all
    in memory (four hours peaked at 2.0 GB). Counted whenever a row is decoded or scored: the decoded recordings
    still referenced anywhere."""
    clip = write_wav(tmp_path / "talk.wav", synth_audio("alice", HELD_OUT_SENTENCES[0]))
    rows = [Row(clip, "alice", start=0.05 * i) for i in range(3 * evaluation.DECODED_AT_ONCE)]
    decoded: list[weakref.ref[np.ndarray]] = []
    alive: list[int] = []
    load, score_long = AudioCache.load, evaluation.score_long

    def count() -> None:
        alive.append(sum(ref() is not None for ref in decoded))

    def loading(cache: AudioCache, row: Row) -> np.ndarray:
        count()
        audio = load(cache, row)
        decoded.append(weakref.ref(audio))
        return audio

    def scoring(*args: Any, **kwargs: Any) -> Any:
        count()
        return score_long(*args, **kwargs)

    monkeypatch.setattr(AudioCache, "load", loading)
    monkeypatch.setattr(evaluation, "score_long", scoring)
    bundle, cache = random_bundle(["alice", "bob"]), AudioCache(None)
    if open_set:
        items, _ = evaluation.score_items(bundle, rows, cache)
        assert len(items) == len(rows)
    else:
        assert len(evaluation.score_rows(bundle, rows, cache).scored) == len(rows)

    assert len(decoded) == len(rows)
    assert max(alive) <= evaluation.DECODED_AT_ONCE


def test_a_long_recording_says_each_pass_as_it_begins() -> None:
    """After the timeline's pass the file as a whole is scored: 17 s of an hour's 82 s under a progress bar that sat
    full, as if hung, before each pass had a line of its own."""
    from spkidd.identify import TIMELINE_PASS, WHOLE_PASS

    bundle, voice = random_bundle(["alice", "bob"]), synth_audio("alice", HELD_OUT_SENTENCES[0])
    said: dict[str, list[str]] = {"long": [], "short": [], "silent": []}
    recordings = {
        "long": np.concatenate([voice, silence(1.0), voice, silence(1.0)]),
        "short": voice[: 4 * SAMPLE_RATE],
        "silent": silence(12.0),
    }
    for name, audio in recordings.items():
        identify_audio(bundle, Path(f"{name}.wav"), audio, 3.0, phase=said[name].append)

    assert said == {"long": [TIMELINE_PASS, WHOLE_PASS], "short": [], "silent": [TIMELINE_PASS]}


def test_each_pass_over_a_long_recording_reports_how_far_it_is() -> None:
    """The file as a whole was scored without a word of progress (17 s of an hour); now chunk by chunk, to its end."""
    from spkidd.identify import TIMELINE_PASS, WHOLE_PASS

    voice = synth_audio("alice", HELD_OUT_SENTENCES[0])
    audio = np.concatenate([voice, silence(1.0), voice, silence(1.0)])
    seconds = len(audio) / SAMPLE_RATE
    told: list[tuple[str, float, float | None]] = []
    passes: list[str] = []

    identify_audio(
        random_bundle(["alice", "bob"]),
        Path("talk.wav"),
        audio,
        3.0,
        report=lambda done, total: told.append((TIMELINE_PASS, done, total)),
        phase=passes.append,
        scoring=lambda done, total: told.append((WHOLE_PASS, done, total)),
    )

    whole = [(done, total) for phase, done, total in told if phase == WHOLE_PASS]
    assert passes == [TIMELINE_PASS, WHOLE_PASS]
    order = [phase for phase, _, _ in told]
    assert order == [TIMELINE_PASS] * order.count(TIMELINE_PASS) + [WHOLE_PASS] * len(whole)
    assert [done for done, _ in whole] == [min(3.0 * (i + 1), seconds) for i in range(len(whole))]
    assert whole[-1] == (seconds, seconds)


def test_the_progress_line_of_a_pass_without_progress_pulses_instead_of_sitting_full() -> None:
    from rich.console import Console
    from rich.progress import Progress

    from spkidd.cli import _FileProgress

    with Progress(console=Console(quiet=True)) as bar:
        line = _FileProgress(bar, "podcast.flac")
        line.begin("who spoke when")
        line.seconds(3600.0, 3600.0)
        line.begin("the file as a whole")

        assert [(task.description, task.total, task.completed) for task in bar.tasks] == [
            ("the file as a whole: podcast.flac", None, 0)
        ]
        line.end()
        assert not bar.tasks


@pytest.mark.parametrize("json_output", [True, False])
def test_ctrl_c_keeps_the_answers_of_the_files_already_identified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_output: bool
) -> None:
    """Ctrl-C in the third of three recordings printed nothing: the answers were held back to the end."""
    import json

    from typer.testing import CliRunner

    import spkidd.identify
    from spkidd.cli import app
    from tests.support.streaming import save_random_model

    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    files = [write_wav(tmp_path / f"{n}.wav", synth_audio("alice", HELD_OUT_SENTENCES[n])) for n in range(3)]
    identify_file = spkidd.identify.identify_file

    def interrupted_at_the_last(bundle: Any, path: Path, *args: Any) -> Any:
        if path == files[-1]:
            raise KeyboardInterrupt
        return identify_file(bundle, path, *args)

    monkeypatch.setattr(spkidd.identify, "identify_file", interrupted_at_the_last)
    command = ["identify", str(model), *map(str, files), *(["--json"] if json_output else [])]
    ran = CliRunner().invoke(app, command, env={"COLUMNS": "300"})

    assert ran.exit_code == 130
    assert "interrupted: 2 of 3 file(s) identified" in ran.stderr
    if json_output:
        assert [json.loads(line)["path"] for line in ran.stdout.splitlines()] == [str(f) for f in files[:2]]
    else:
        assert files[0].name in ran.stdout and files[1].name in ran.stdout and files[2].name not in ran.stdout


def test_positions_in_a_long_recording_read_as_a_clock() -> None:
    from spkidd.turns import amount_of_speech, clock

    assert [clock(s) for s in (0.0, 3.6, 59.96, 3412.5, 3605.28)] == [
        "0:00.0",
        "0:03.6",
        "1:00.0",
        "56:52.5",
        "1:00:05.3",
    ]
    assert [clock(s, 0) for s in (0.0, 600.0, 3600.0)] == ["0:00", "10:00", "1:00:00"]
    assert [amount_of_speech(s) for s in (3.46, 59.9, 725.2, 3725.0)] == ["3.5 s", "59.9 s", "12 min 5 s", "1 h 2 min"]


def test_the_timeline_of_an_hour_reads_as_a_clock_in_the_picture_and_the_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An hour's picture had its time axis at 0, 500, ..., 3500 s and its table at '3412.5- 3417.3 s'; and a
    conversation's title said 'the file as a whole' of the voice that spoke most."""
    from spkidd.cli import _print_identified
    from spkidd.identify import FileResult, speech_per_speaker
    from spkidd.timeline_picture import timeline_figure

    turns = [
        {"start": 12.0, "end": 15.5, "speaker": "alice", "confidence": 0.9},
        {"start": 3412.5, "end": 3417.3, "speaker": "bob", "confidence": 0.8},
    ]
    shares = {"bob": 0.5783, "alice": 0.4217}
    result = FileResult(
        "podcast.flac", "bob", 0.8, 0.5, shares, 3605.3, turns, speech_per_speaker(turns), by_timeline=True
    )

    figure = timeline_figure(result)
    figure.canvas.draw()
    axes = figure.axes[0]
    ticks = [label.get_text() for label in axes.get_xticklabels() if 0 <= label.get_position()[0] <= 3605.3]
    assert ticks == [f"{minute}:00" for minute in range(0, 60, 10)] + ["1:00:00"]
    assert "spoke most: bob (57% of the speech)" in axes.get_title()
    assert [label.get_text() for label in axes.get_yticklabels()] == ["alice: 3.5 s of speech", "bob: 4.8 s of speech"]

    _print_identified([result])
    out = capsys.readouterr().out
    assert "  56:52.5 - 56:57.3    bob (80%)" in out
    assert "who spoke: bob 4.8 s, alice 3.5 s" in out


def _manifest_into_a_recording(folder: Path) -> Path:
    """Pieces of one recording, the second starting past its end, and a 0-byte file."""
    recording = write_wav(folder / "podcast.wav", np.concatenate([synth_audio("alice", HELD_OUT_SENTENCES[0])] * 2))
    (folder / "empty.wav").write_bytes(b"")
    manifest = folder / "pieces.csv"
    past = len(sf.read(recording)[0]) / SAMPLE_RATE + 5
    lines = ["path,speaker,start,end", "podcast.wav,alice,0,2", f"podcast.wav,alice,{past:.1f},{past + 2:.1f}"]
    manifest.write_text("\n".join([*lines, "empty.wav,alice,,"]) + "\n")
    return manifest


def test_a_skipped_piece_of_a_long_recording_is_said_with_its_manifest_line(tmp_path: Path) -> None:
    """'podcast.wav: start ... is past the end' did not say which of a manifest's hundreds of rows into the
    recording it was."""
    from spkidd.dataset import read_manifest

    manifest = _manifest_into_a_recording(tmp_path)

    scoring = evaluation.score_rows(random_bundle(["alice", "bob"]), read_manifest(manifest), AudioCache(None))

    assert len(scoring.scored) == 1
    assert [reason.split(": ")[:2] for reason in scoring.skipped] == [
        [f"{manifest}:3", str(tmp_path / "podcast.wav")],
        [f"{manifest}:4", str(tmp_path / "empty.wav")],
    ]
    assert "past the end" in scoring.skipped[0]


def test_training_says_a_skipped_piece_with_its_manifest_line(tmp_path: Path) -> None:
    from rich.console import Console

    from spkidd.dataset import read_manifest
    from train.run import decode_rows

    manifest = _manifest_into_a_recording(tmp_path)
    console = Console(record=True, width=300)

    prepared = decode_rows(read_manifest(manifest), AudioCache(None), console, "training audio")

    assert len(prepared.rows) == 1
    said = console.export_text()
    assert f"{manifest}:3: {tmp_path / 'podcast.wav'}: start" in said
    assert f"{manifest}:4: {tmp_path / 'empty.wav'}:" in said


def _conversation(seconds: float) -> np.ndarray:
    """Two voices taking turns, with pauses, for `seconds`."""
    turns = [synth_audio(voice, HELD_OUT_SENTENCES[i]) for i, voice in enumerate(("alice", "bob", "alice", "carol"))]
    once = np.concatenate([part for turn in turns for part in (turn, silence(0.7))])
    return np.tile(once, int(seconds * SAMPLE_RATE) // len(once) + 1)[: int(seconds * SAMPLE_RATE)]


@pytest.fixture(scope="module")
def conversation(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four minutes of a conversation as a FLAC."""
    path = tmp_path_factory.mktemp("long") / "talk.flac"
    sf.write(path, _conversation(240.0), SAMPLE_RATE, subtype="PCM_16")
    return path


@pytest.mark.parametrize("extension", ["flac", "mp3"])
def test_a_long_recording_read_a_block_at_a_time_gets_the_answer_of_the_whole(
    conversation: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extension: str
) -> None:
    """identify decoded a long recording whole (an hour of FLAC peaked at 630 MB); read a block at a time, twice,
    its --json is the same to the byte. Blocks of 1.37 s put their edges inside chunks, encoder windows and turns."""
    import dataclasses
    import json
    import subprocess

    from spkidd.audio import decode
    from spkidd.audio.decode import load_audio
    from spkidd.identify import identify_file

    path = tmp_path / f"talk.{extension}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(conversation), str(path)], check=True)
    bundle = random_bundle(["alice", "bob", "carol"])
    whole = identify_audio(bundle, path, load_audio(path), 3.0)
    monkeypatch.setattr(decode, "STREAM_BLOCK_S", 1.37)

    streamed = identify_file(bundle, path, 3.0)

    assert len(whole.timeline) > 20 and not whole.error
    assert json.dumps(dataclasses.asdict(streamed)) == json.dumps(dataclasses.asdict(whole))


def test_identify_holds_no_more_of_a_long_recording_than_of_a_short_one(tmp_path: Path) -> None:
    """The largest memory numpy holds at once (tracemalloc follows its arrays) while a 2-min and a 10-min recording
    are identified: held whole, the longer one's 8 minutes more were 31 MB as float32 and 15 MB more as int16."""
    import tracemalloc

    from spkidd.identify import identify_file

    bundle = random_bundle(["alice", "bob", "carol"])
    peaks = []
    for minutes in (2, 10):
        path = tmp_path / f"talk{minutes}.flac"
        sf.write(path, _conversation(minutes * 60.0), SAMPLE_RATE, subtype="PCM_16")
        tracemalloc.start()
        try:
            result = identify_file(bundle, path, 3.0)
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        assert result.timeline and not result.error

    assert peaks[1] - peaks[0] < 4_000_000, f"peaks {peaks[0] / 1e6:.1f} and {peaks[1] / 1e6:.1f} MB"


@pytest.mark.parametrize("open_set", [False, True])
def test_evaluate_moves_its_scoring_bar_through_a_long_row_and_ends_on_whole_rows(
    tmp_path: Path, open_set: bool
) -> None:
    """A long manifest row sat silent while it was scored; its chunks now move the bar by their share of the row,
    and the bar's count comes out a whole number of rows (fractions that do not sum to exactly 1 left it at n - 1)."""
    short = write_wav(tmp_path / "short.wav", synth_audio("alice", HELD_OUT_SENTENCES[0]))
    long = write_wav(tmp_path / "long.wav", _conversation(60.0))
    rows = [Row(short, "alice"), Row(long, "bob"), Row(short, "alice", start=0.1), Row(short, "carol")]
    told: list[float] = []
    bundle, cache = random_bundle(["alice", "bob"]), AudioCache(None)

    if open_set:
        evaluation.score_items(bundle, rows, cache, on_scored=told.append)
    else:
        evaluation.score_rows(bundle, rows, cache, on_scored=told.append)

    parts = [share for share in told if 0 < share < 1]
    assert len(parts) > 10, "the long row told its chunks"
    completed = 0.0
    for share in told:
        completed += share
    assert completed == len(rows), "added up one by one, as the progress bar adds them"
