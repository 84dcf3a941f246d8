"""`spkidd run` refuses a file source that cannot play at all the same way whatever the reason: a missing file and
a file that is not audio both stop start-up, and both make a reload that adds them refused, with the reason. A file
damaged further on is no reason to refuse it: it plays up to the damage, as a recording that stops there."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd import SAMPLE_RATE
from spkidd.audio.decode import DamagedAudioError, load_audio
from tests.support.daemon import DaemonProcess, file_source, random_model, write_config
from tests.support.mosquitto import free_port

pytestmark = pytest.mark.timeout(180)


def _config(tmp_path: Path, sources: str) -> Path:
    model = tmp_path / "random.safetensors"
    if not model.exists():
        random_model(model, ["alice", "bob"])
    extra = f'[embedded_broker]\nport = {free_port()}\nimplementation = "mosquitto"\n'
    return write_config(tmp_path / "config.toml", model, sources, 'broker = "embedded"', extra)


def _tone_wav(path: Path, seconds: float) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return path


def _not_audio(path: Path) -> Path:
    path.write_text("a shopping list, not a recording\n" * 50)
    return path


def _reason(path: Path) -> str:
    """What the daemon says of a file source it refuses, missing or not audio."""
    return f"no such file {path}" if not path.exists() else f"{path}: ffmpeg could not decode it"


@pytest.mark.parametrize("kind", ["missing", "not audio"])
def test_a_file_source_that_cannot_play_stops_start_up(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "kitchen.wav"
    if kind == "not audio":
        _not_audio(path)
    daemon = DaemonProcess(_config(tmp_path, file_source(path)), tmp_path / "daemon.log")
    try:
        assert daemon.wait(60) == 1
    finally:
        daemon.kill()
    log = daemon.text()
    assert f"cannot start: source 'kitchen': {_reason(path)}" in log, log[-3000:]
    assert "ready" not in log and "source kitchen" not in log and "Traceback" not in log, log[-3000:]


def test_a_file_damaged_part_way_plays_up_to_the_damage(tmp_path: Path) -> None:
    """An MP3 whose last third is overwritten: its first block decodes, so the daemon starts, plays it, and says where
    it broke; the daemon stays up."""
    wav = _tone_wav(tmp_path / "tone.wav", 24.0)
    mp3 = tmp_path / "tone.mp3"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), str(mp3)], check=True)
    data = bytearray(mp3.read_bytes())
    for i in range(len(data) * 2 // 3, len(data), 97):
        data[i] = 0xFF
    mp3.write_bytes(bytes(data))
    with pytest.raises(DamagedAudioError) as damage:
        load_audio(mp3)
    assert len(damage.value.audio) > 12 * SAMPLE_RATE  # past the first block the start-up check decodes
    daemon = DaemonProcess(_config(tmp_path, file_source(mp3, realtime=False, loop=False)), tmp_path / "daemon.log")
    try:
        log = daemon.wait_log(lambda text: "kitchen: source failed" in text, timeout=90)
        assert daemon.process.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    finally:
        daemon.kill()
    assert "ready: 1 source(s)" in log and f"source kitchen: online (replaying {mp3})" in log, log[-3000:]
    assert f"kitchen: source failed: {damage.value}" in log, log[-3000:]


def test_a_reload_adding_a_file_that_cannot_play_is_refused(tmp_path: Path) -> None:
    """SIGHUP with a second source that is not audio, then with one that is missing: both reloads are refused with
    the reason, and the running source plays on."""
    playing = file_source(_tone_wav(tmp_path / "tone.wav", 3.0))
    config = _config(tmp_path, playing)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        daemon.wait_log(lambda text: "source kitchen: online" in text)
        for bad in (_not_audio(tmp_path / "notes.wav"), tmp_path / "gone.wav"):
            refused = daemon.text().count("reload refused")
            config.write_text(config.read_text().replace(playing, playing + file_source(bad, "hall")))
            daemon.signal(signal.SIGHUP)
            log = daemon.wait_log(lambda text, n=refused: text.count("reload refused") > n)
            assert f"still running the previous configuration: source 'hall': {_reason(bad)}" in log, log[-3000:]
            config.write_text(config.read_text().replace(file_source(bad, "hall"), ""))
        assert daemon.process.poll() is None
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    finally:
        daemon.kill()
    log = daemon.text()
    assert "source hall" not in log and "reloaded" not in log and "Traceback" not in log, log[-3000:]
