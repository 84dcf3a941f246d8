"""End to end on synthetic speakers: `spkidd train` -> `spkidd evaluate` / `spkidd identify` -> right names."""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd.identify import identify_audio
from spkidd.modelfile import load_model
from spkidd.synthetic import synth_speech
from spkidd.turns import CHANGE_LAG_S
from tests.conftest import TRAINED_VOICES
from tests.support.daemon import SPKIDD
from train.calibrate import MIN_SPEECH_CANDIDATES_S


def test_trained_model_identifies_held_out_sentences(
    trained_model: Path, held_out_corpus: Path, tmp_path: Path
) -> None:
    report_dir = tmp_path / "report"
    proc = subprocess.run(
        [SPKIDD, "evaluate", str(trained_model), str(held_out_corpus), "--report", str(report_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads((report_dir / "report.json").read_text())
    assert report["n"] == 12 and report["labels"] == TRAINED_VOICES
    assert report["accuracy"] >= 11 / 12
    assert report["top_k"]["3"] == 1.0
    assert set(report) >= {"accuracy", "top_k", "n", "labels", "confusion_matrix", "per_speaker"}
    assert np.array(report["confusion_matrix"]).sum() == 12
    png = (report_dir / "confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1 accuracy" in proc.stdout


def test_model_file_records_what_training_chose(trained_model: Path) -> None:
    bundle = load_model(trained_model)
    training = bundle.training
    assert training["settings"]["epochs"] == 10 and training["settings"]["encoder"] == "ge2e"
    assert training["calibration"]["impostors"] == "held-out speech of the other speakers"
    assert training["data"]["speakers"] == 3 and training["data"]["skipped"] == 0
    assert 0.0 < bundle.decision["min_score"] < 1.0
    assert bundle.decision["min_speech_s"] in MIN_SPEECH_CANDIDATES_S, "the wait before a first name is calibrated"
    # The validation set is a handful of utterances (one wrong would be 0.25), and the synthetic voices are far
    # apart (other speakers score below 0): none is named as someone else first.
    assert training["calibration"]["val_wrong_first"] == 0.0, training["calibration"]
    answers, clips = training["calibration"]["val_answers"], training["data"]["val_items"]
    assert sum(answers.values()) == pytest.approx(1.0) and answers["named_wrong"] == 0.0, answers
    assert all(abs(share * clips - round(share * clips)) < 1e-9 for share in answers.values()), "shares of the clips"
    assert trained_model.with_name(trained_model.stem + ".training.png").is_file()
    assert not trained_model.with_name(trained_model.name + ".ckpt").exists()


def test_identify_names_speakers_and_draws_a_timeline(household_model: Path, tmp_path: Path) -> None:
    from tests.conftest import HELD_OUT_SENTENCES

    clips = []
    for voice in ("carol", "bob"):
        clips.append(sf.read(synth_speech(voice, " ".join(HELD_OUT_SENTENCES[:3]), tmp_path / f"{voice}.wav"))[0])
    long_path = tmp_path / "conversation.flac"
    sf.write(long_path, np.concatenate(clips), 16000)
    single = synth_speech("alice", HELD_OUT_SENTENCES[3], tmp_path / "alice.wav")
    proc = subprocess.run(
        [SPKIDD, "identify", str(household_model), str(single), str(long_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert results[0]["speaker"] == "alice" and results[0]["timeline"] == []
    timeline = results[1]["timeline"]
    assert len(timeline) >= 2
    named = [turn["speaker"] for turn in timeline if turn["speaker"] != "unknown"]
    assert named[0] == "carol" and named[-1] == "bob", "utterances under the threshold are unknown turns"
    assert timeline[0]["start"] == 0.0 and timeline[-1]["end"] > 10
    join = len(clips[0]) / 16000
    for turn in timeline:
        assert turn["speaker"] in (("carol", "unknown") if turn["end"] <= join + 0.5 else ("bob",)), timeline
    speakers = results[1]["speakers"]
    assert {"carol", "bob"} <= set(speakers) <= {"carol", "bob", "unknown"}
    assert sum(speakers.values()) <= results[1]["duration_s"] and list(speakers.values()) == sorted(
        speakers.values(), reverse=True
    )


def test_identify_cuts_an_utterance_where_a_second_voice_takes_over(trained_model: Path, tmp_path: Path) -> None:
    """Two voices back to back, no pause: one utterance to the gate, two turns in the timeline, cut near the join
    (the decider names the second voice one to two seconds late; the timeline looks back)."""
    from tests.conftest import HELD_OUT_SENTENCES

    clips = []
    for voice in ("carol", "bob"):
        audio = sf.read(synth_speech(voice, " ".join(HELD_OUT_SENTENCES[:2]), tmp_path / f"{voice}.wav"))[0]
        loud = np.flatnonzero(np.abs(audio) > 0.01)
        clips.append(audio[loud[0] : loud[-1] + 1])
    path = tmp_path / "back_to_back.wav"
    sf.write(path, np.concatenate(clips), 16000)
    proc = subprocess.run(
        [SPKIDD, "identify", str(trained_model), str(path), "--json"], capture_output=True, text=True, check=True
    )
    timeline = json.loads(proc.stdout)["timeline"]
    join = len(clips[0]) / 16000
    merged = next(turn["utterance_id"] for turn in timeline if turn["start"] < join < turn["end"])
    first, second = (turn for turn in timeline if turn["utterance_id"] == merged)
    assert (first["speaker"], second["speaker"]) == ("carol", "bob"), timeline
    assert first["end"] == second["start"] and abs(second["start"] - join) <= CHANGE_LAG_S, timeline
    assert {turn["speaker"] for turn in timeline if turn["end"] <= first["end"]} == {"carol"}
    assert {turn["speaker"] for turn in timeline if turn["start"] >= second["start"]} == {"bob"}


def test_identify_reports_unusable_files_without_dying(trained_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF nonsense")
    good = synth_speech("bob", "Hello there, how are you doing today?", tmp_path / "bob.wav")
    proc = subprocess.run(
        [SPKIDD, "identify", str(trained_model), str(bad), str(good), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 1
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert results[0]["error"] and next(iter(results[1]["top_k"])) == "bob"


def test_identify_reports_its_progress_through_a_long_recording(trained_model: Path, tmp_path: Path) -> None:
    """The timeline's pass over a long recording tells how far it got (the command's progress bar)."""
    from tests.conftest import HELD_OUT_SENTENCES

    path = synth_speech("alice", " ".join(HELD_OUT_SENTENCES * 2), tmp_path / "long.wav")
    audio = sf.read(path, dtype="float32")[0]
    reports: list[tuple[float, float]] = []
    result = identify_audio(load_model(trained_model), path, audio, 3.0, report=lambda *r: reports.append(r))
    assert result.speaker == "alice" and result.timeline
    assert reports and {total for _, total in reports} == {len(audio) / 16000}
    done = [d for d, _ in reports]
    assert done == sorted(done) and done[-1] <= len(audio) / 16000
