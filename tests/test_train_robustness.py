"""Training never dies on one bad file, refuses bad output paths early, survives Ctrl-C, resumes, runs under
torchrun with two processes, and reads its decode cache on a second run."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from spkidd.audio_cache import AudioCache
from spkidd.dataset import Row
from spkidd.modelfile import load_model
from spkidd.synthetic import SENTENCES, synth_speech
from tests.support.daemon import SPKIDD

SMALL = ["--pools", "1", "--seed", "1"]
SMALL_SCRATCH = ["--encoder", "none", "--hidden", "32", "--layers", "1", "--seed", "1"]


def _copy_corpus(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_bad_files_are_skipped_counted_and_small_speakers_warned(speech_corpus: Path, tmp_path: Path) -> None:
    data = _copy_corpus(speech_corpus, tmp_path / "data")
    (data / "alice" / "empty.wav").write_bytes(b"")
    (data / "alice" / "notes.wav").write_text("this is not audio")
    sf.write(data / "bob" / "click.wav", np.zeros(800), 16000)
    clip, rate = sf.read(data / "carol" / "carol_01.wav")
    sf.write(data / "carol" / "copied.flac", clip, rate)
    flac = (data / "carol" / "copied.flac").read_bytes()
    (data / "carol" / "copied.flac").write_bytes(flac[: len(flac) // 2])  # an interrupted copy
    (data / "zoe").mkdir()
    shutil.copy(data / "carol" / "carol_00.wav", data / "zoe" / "only.wav")
    out = tmp_path / "m.safetensors"
    proc = subprocess.run(
        [SPKIDD, "train", str(data), "--out", str(out), "--epochs", "2", *SMALL, "--cache-dir", str(tmp_path / "c")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipped 4 unusable file(s)" in proc.stderr
    assert proc.stderr.count("copied.flac: damaged (truncated or corrupt): the audio stops at") == 1, "said once"
    assert "speaker 'zoe' has only 1 clip(s)" in proc.stderr
    bundle = load_model(out)
    assert bundle.training["data"]["skipped"] == 4
    assert bundle.labels == ["alice", "bob", "carol", "zoe"]


def test_tiny_manifest_trains_one_epoch(tmp_path: Path) -> None:
    """Two speakers, one file each, one epoch: a single optimizer step, which the schedule must survive."""
    synth_speech("alice", SENTENCES[0], tmp_path / "a.wav")
    synth_speech("bob", SENTENCES[1], tmp_path / "b.wav")
    (tmp_path / "m.csv").write_text("path,speaker\na.wav,alice\nb.wav,bob\n")
    out = tmp_path / "m.safetensors"
    proc = subprocess.run(
        [SPKIDD, "train", str(tmp_path / "m.csv"), "--out", str(out), "--epochs", "1", *SMALL],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_model(out).labels == ["alice", "bob"]


def test_unwritable_output_fails_before_training(speech_corpus: Path, tmp_path: Path) -> None:
    start = time.monotonic()
    proc = subprocess.run(
        [SPKIDD, "train", str(speech_corpus), "--out", str(tmp_path / "missing" / "m.safetensors")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr
    assert time.monotonic() - start < 60


def test_bad_option_value_is_refused(speech_corpus: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [SPKIDD, "train", str(speech_corpus), "--out", str(tmp_path / "m"), "--cell", "transformer"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "cell must be one of gru, lstm" in proc.stderr


def _training_past_its_first_epoch(corpus: Path, out: Path, cache: Path) -> tuple[list[str], subprocess.Popen[str]]:
    """`spkidd train` (the command, and the process) once its first checkpoint is written, with its one head
    worker running; stderr is piped."""
    cmd = [SPKIDD, "train", str(corpus), "--out", str(out), *SMALL, "--cache-dir", str(cache)]
    proc = subprocess.Popen([*cmd, "--epochs", "200", "--patience", "200"], stderr=subprocess.PIPE, text=True)
    checkpoint = out.with_name(out.name + ".ckpt")
    deadline = time.monotonic() + 240
    while not checkpoint.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    if not checkpoint.exists():
        proc.kill()
        raise AssertionError(f"no checkpoint after the first epoch: {proc.communicate()[1][-2000:]}")
    return cmd, proc


def _worker_of(proc: subprocess.Popen[str]) -> int:
    (worker,) = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    return int(worker)


def test_ctrl_c_keeps_checkpoint_and_writes_no_model_then_resume_finishes(speech_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    checkpoint = tmp_path / "m.safetensors.ckpt"
    cmd, proc = _training_past_its_first_epoch(speech_corpus, out, tmp_path / "c")
    try:
        time.sleep(1.0)
        worker = _worker_of(proc)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert not _running(worker), "the head's worker process ends with the training"
    assert "interrupted: no model written" in stderr and "--resume" in stderr
    assert checkpoint.exists() and not out.exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".m.safetensors*"))
    before = float(torch.load(checkpoint, weights_only=True)["wall_s"])
    other = subprocess.run([*cmd, "--heads", "1", "--resume"], capture_output=True, text=True)
    assert other.returncode != 0 and "checkpoint was made with other settings" in other.stderr, other.stderr
    resumed = subprocess.run([*cmd, "--epochs", "200", "--patience", "1", "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming after epoch" in resumed.stderr
    assert load_model(out).training["epochs_run"] >= 2
    assert load_model(out).training["wall_s"] > before > 0, "the training time counts the part before the resume"
    assert not checkpoint.exists()


def test_a_dead_head_worker_ends_training_with_a_message_and_keeps_the_checkpoint(
    speech_corpus: Path, tmp_path: Path
) -> None:
    """The second head's process killed (the OOM killer, say): the parent stops at once, says so, writes no model
    and keeps the last finished epoch for --resume."""
    out = tmp_path / "m.safetensors"
    _, proc = _training_past_its_first_epoch(speech_corpus, out, tmp_path / "c")
    try:
        os.kill(_worker_of(proc), signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    assert "a training worker process died" in stderr and "--resume" in stderr
    assert "Traceback" not in stderr
    assert out.with_name(out.name + ".ckpt").exists() and not out.exists()


def test_a_head_worker_does_not_outlive_a_killed_training(speech_corpus: Path, tmp_path: Path) -> None:
    """`spkidd train` killed outright (SIGKILL: no handler runs): its head worker sees its pipe end and exits
    instead of waiting for the next epoch forever."""
    _, proc = _training_past_its_first_epoch(speech_corpus, tmp_path / "m.safetensors", tmp_path / "c")
    try:
        worker = _worker_of(proc)
        proc.kill()
        proc.communicate(timeout=30)
        deadline = time.monotonic() + 30
        while _running(worker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _running(worker), "the worker exits once its parent is gone"
    finally:
        proc.kill()


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    status = Path(f"/proc/{pid}/status")
    try:
        return "State:\tZ" not in status.read_text()
    except FileNotFoundError:
        return False


def _torchrun_train(corpus: Path, out: Path, cache: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """`spkidd train` in two processes under torchrun, one thread each."""
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node=2", "--no-python"]
    train = [str(Path(sys.executable).with_name("spkidd")), "train", str(corpus), "--out", str(out)]
    return subprocess.run(
        [*torchrun, *train, *options, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


def test_two_process_distributed_training_under_torchrun(speech_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp.safetensors"
    proc = _torchrun_train(speech_corpus, out, tmp_path / "c", "--epochs", "1", *SMALL_SCRATCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert load_model(out).training["epochs_run"] == 1


def test_two_process_training_of_the_head_on_the_pretrained_encoder_under_torchrun(
    speech_corpus: Path, held_out_corpus: Path, tmp_path: Path
) -> None:
    """The default trainer shares the encoding and the epochs out between the ranks: one model comes out, from
    rank 0 alone (one log of the epochs), both ranks scored the same validation, and the model names held-out
    sentences of the corpus."""
    out = tmp_path / "ddp.safetensors"
    proc = _torchrun_train(speech_corpus, out, tmp_path / "c", "--epochs", "3", "--patience", "3", *SMALL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "ddp.safetensors", "ddp.training.png"]
    for epoch in (1, 2, 3):
        assert proc.stderr.count(f"  epoch {epoch} loss") == 1, proc.stderr[-3000:]
    start = re.findall(r"pretrained encoder alone: validation accuracy per step (\S+)", proc.stderr)
    assert len(start) == 2 and start[0] == start[1], "both ranks validate on the whole validation pool"
    bundle = load_model(out)
    assert bundle.training["epochs_run"] == 3 and bundle.training["encoder"].startswith("ge2e")
    report_dir = tmp_path / "report"
    evaluated = subprocess.run(
        [SPKIDD, "evaluate", str(out), str(held_out_corpus), "--report", str(report_dir)],
        capture_output=True,
        text=True,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads((report_dir / "report.json").read_text())["accuracy"] >= 11 / 12


def test_second_run_reads_the_decode_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wav = tmp_path / "a.wav"
    t = np.arange(16000) / 16000
    sf.write(wav, 0.5 * np.sin(2 * np.pi * 300 * t), 48000)
    cache = AudioCache(tmp_path / "cache")
    first = cache.load(Row(path=wav, speaker="a"))

    def no_decoding(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr("spkidd.audio_cache.load_audio", no_decoding)
    second = cache.load(Row(path=wav, speaker="a"))
    assert np.abs(first - second).max() < 1e-4
    sf.write(wav, 0.5 * np.sin(2 * np.pi * 500 * t), 48000)
    with pytest.raises(AssertionError, match="decoded again"):
        cache.load(Row(path=wav, speaker="a"))


def test_ctrl_c_before_the_first_epoch_says_so_and_resume_says_it_starts_over(
    speech_corpus: Path, tmp_path: Path
) -> None:
    """A user's Ctrl-C while training was still encoding ended it silently (exit 130, no word), and a later
    --resume started over without saying so."""
    out = tmp_path / "m.safetensors"
    cmd = [SPKIDD, "train", str(speech_corpus), "--out", str(out), *SMALL, "--cache-dir", str(tmp_path / "c")]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    said = []
    try:
        for line in proc.stderr:
            said.append(line)
            if "plan: up to" in line:
                proc.send_signal(signal.SIGINT)
                break
        said.append(proc.communicate(timeout=120)[1])
    finally:
        proc.kill()
    stderr = "".join(said)
    assert proc.returncode == 130, stderr
    assert "interrupted: no model written; no epoch had finished" in stderr, stderr
    assert not out.exists() and not out.with_name(out.name + ".ckpt").exists()
    resumed = subprocess.run([*cmd, "--epochs", "1", "--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "--resume: no checkpoint at" in resumed.stderr and "training from the start" in resumed.stderr
