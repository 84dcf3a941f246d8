"""Commands that fail say why and exit non-zero, without a traceback, and before long work where they can: a
`--chunk` that cannot cut a recording, an unwritable `--report` folder, a `--noise-dir` that is not there, a
noise folder without audio, a file without speech; and messages with brackets printed as they are."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from rich.console import Console

from spkidd.audio_cache import AudioCache
from spkidd.enrollment import NO_SPEECH
from spkidd.synthetic import SENTENCES, synth_corpus
from tests.support.daemon import SPKIDD
from tests.support.streaming import save_random_model
from train.fit import TrainSettings
from train.run import TrainInputs, _noise_clips, _warn_starting_over, _warn_unused_noise


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SPKIDD, *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sentences each of alice and bob, whom the random model knows, and of carol, a stranger to it."""
    return synth_corpus(tmp_path_factory.mktemp("corpus"), ["alice", "bob", "carol"], SENTENCES[:2])


@pytest.mark.parametrize("chunk", ["0", "-1", "0.4"])
def test_identify_refuses_a_chunk_shorter_than_half_a_second(corpus: Path, tmp_path: Path, chunk: str) -> None:
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    proc = _run("identify", str(model), str(corpus / "alice" / "alice_00.wav"), "--chunk", chunk)
    assert proc.returncode == 2, proc.stderr
    assert "--chunk" in proc.stderr and "0.5" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("open_set", [False, True])
def test_evaluate_says_once_which_files_it_skipped(corpus: Path, tmp_path: Path, open_set: bool) -> None:
    """A file it cannot use is named once, after the progress bar, with the others; it was also a log line of its
    own in the middle of the bar (and the open-set figures dropped it without a word)."""
    data = tmp_path / "data"
    shutil.copytree(corpus, data)
    (data / "alice" / "notes.wav").write_text("this is not audio")
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    proc = _run("evaluate", str(model), str(data), "--cache-dir", str(tmp_path / "cache"), *["--open-set"] * open_set)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 unusable file(s)" in proc.stderr and proc.stderr.count("notes.wav") == 1, proc.stderr


@pytest.mark.parametrize("open_set", [False, True])
def test_evaluate_refuses_a_report_folder_it_cannot_create_before_scoring(
    corpus: Path, tmp_path: Path, open_set: bool
) -> None:
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    proc = _run("evaluate", str(model), str(corpus), "--report", str(blocker / "report"), *["--open-set"] * open_set)
    assert proc.returncode == 2
    assert "cannot write the report in" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == "", "refused before any figure was computed"


@pytest.mark.parametrize(("open_set", "written"), [(False, "report.json"), (True, "open_set.json")])
def test_evaluate_says_when_the_report_cannot_be_written_after_scoring(
    corpus: Path, tmp_path: Path, open_set: bool, written: str
) -> None:
    """The folder passes the check, but the report's own file cannot be written (a folder is in its place)."""
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    report = tmp_path / "report"
    (report / written).mkdir(parents=True)
    proc = _run("evaluate", str(model), str(corpus), "--report", str(report), *["--open-set"] * open_set)
    assert proc.returncode == 2
    assert "could not be written to" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout, "the figures were printed before the write failed"


def test_train_refuses_a_missing_noise_folder_before_decoding(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    proc = _run("train", str(corpus), "--out", str(out), "--noise-dir", str(tmp_path / "no-such-noise"))
    assert proc.returncode == 2
    assert "--noise-dir" in proc.stderr and "no such folder" in proc.stderr and "Traceback" not in proc.stderr
    assert "decoding" not in proc.stderr and not out.exists()


def test_a_noise_folder_without_audio_is_warned_about(tmp_path: Path) -> None:
    noise = tmp_path / "noise"
    noise.mkdir()
    (noise / "readme.txt").write_text("the recordings are on the other disk")
    (noise / "._fan.wav").write_bytes(b"\x00\x05\x16\x07")
    (noise / "hum.wav").write_bytes(b"RIFF")
    shown = io.StringIO()
    clips = _noise_clips(noise, AudioCache(tmp_path / "cache"), Console(file=shown, width=200))
    assert clips == []
    assert f"no usable audio in --noise-dir {noise} (1 audio file(s))" in shown.getvalue()
    assert "readme.txt" not in shown.getvalue() and "._fan.wav" not in shown.getvalue(), "neither is audio"


def test_a_noise_folder_nothing_uses_is_warned_about(tmp_path: Path) -> None:
    """Only the scratch network without augmentation has no use for the user's noise (the pretrained encoder's
    training still validates on noisy audio with it)."""
    inputs = TrainInputs(tmp_path, tmp_path / "m.safetensors", noise_dir=tmp_path)
    said = {}
    for encoder, augment in (("none", False), ("none", True), ("ge2e", False)):
        shown = io.StringIO()
        _warn_unused_noise(inputs, TrainSettings(encoder=encoder, augment=augment), Console(file=shown, width=200))
        said[encoder, augment] = shown.getvalue()
    assert f"--noise-dir {tmp_path} is not used" in said["none", False]
    assert said["none", True] == said["ge2e", False] == ""


def test_a_file_without_speech_is_said_to_have_none(corpus: Path, tmp_path: Path) -> None:
    """A silent doorbell clip was answered `unknown 99%` with made-up candidates; it now says there is no speech,
    in the table and in --json, and the command exits 1 as for any file it could not identify."""
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(5 * 16000, dtype=np.float32), 16000)
    speech = corpus / "alice" / "alice_00.wav"
    table = _run("identify", str(model), str(silence), str(speech))
    assert table.returncode == 1 and "no speech found" in table.stdout, table.stdout
    as_json = _run("identify", str(model), str(silence), "--json")
    answer = json.loads(as_json.stdout)
    assert (answer["speaker"], answer["error"], answer["top_k"]) == ("", NO_SPEECH, {})


def test_brackets_in_messages_and_names_are_printed_as_they_are(corpus: Path, tmp_path: Path) -> None:
    """The terminal's markup once swallowed `[a-z]` from the --label-pattern hint (copied, it failed as a regular
    expression) and showed a speaker called `[b]Nina` as a bold `Nina`."""
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "a.wav").write_bytes((corpus / "alice" / "alice_00.wav").read_bytes())
    refused = _run("train", str(flat), "--out", str(tmp_path / "x.safetensors"))
    assert refused.returncode == 2 and "'^(?P<speaker>[a-z]+)_'" in refused.stderr, refused.stderr
    model = save_random_model(tmp_path / "m.safetensors", ["[b]Nina", "bob"])
    assert "[b]Nina" in _run("speakers", str(model)).stdout


def test_train_refuses_a_folder_as_the_model_file_before_decoding(corpus: Path, tmp_path: Path) -> None:
    """`--out models/` trained to the end and then failed with a traceback (IsADirectoryError) as the model was
    written, its checkpoint left beside the folder; enroll and forget with such an --out follow the same rule."""
    models = tmp_path / "models"
    models.mkdir()
    proc = _run("train", str(corpus), "--out", str(models))
    assert proc.returncode == 2
    assert f"{models} is a folder" in proc.stderr and str(models / "voices.safetensors") in proc.stderr
    assert "Traceback" not in proc.stderr and "decoding" not in proc.stderr
    assert list(models.iterdir()) == [] and not (tmp_path / "models.ckpt").exists()
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    for command in (("forget", str(model), "bob"), ("enroll", str(model), "-s", "carol", str(model))):
        proc = _run(*command, "--out", str(models))
        assert proc.returncode == 2 and f"{models} is a folder" in proc.stderr, (command, proc.stderr)
        assert list(models.iterdir()) == []


@pytest.mark.parametrize("resume", [False, True])
def test_starting_over_an_interrupted_run_is_warned_about_before_it_is_replaced(tmp_path: Path, resume: bool) -> None:
    """Run again without --resume after Ctrl-C, training replaced the interrupted run's checkpoint at its first epoch
    without a word."""
    out = tmp_path / "m.safetensors"
    out.with_name("m.safetensors.ckpt").write_bytes(b"epochs")
    shown = io.StringIO()
    _warn_starting_over(TrainInputs(tmp_path, out, resume=resume), Console(file=shown, width=300))
    if resume:
        assert shown.getvalue() == ""
    else:
        assert "m.safetensors.ckpt holds an interrupted run; this one starts over" in shown.getvalue()
        assert "add --resume to go on from it" in shown.getvalue()
