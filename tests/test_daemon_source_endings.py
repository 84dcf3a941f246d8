"""The daemon's log says why a source's audio stopped: "stopped" when the daemon stops it (SIGTERM, a reload that
restarts it), "audio ended" only when a file played once reached its end. A looping file and an RTSP camera never
end by themselves, so their log never says their audio ended."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

from spkidd.synthetic import synth_audio
from tests.support.daemon import DaemonProcess, file_source, random_model, write_config
from tests.support.mosquitto import free_port
from tests.support.rtsp_server import RtspServer
from tests.support.streaming import silence, trim, write_wav

pytestmark = pytest.mark.timeout(180)


def test_the_log_says_stopped_for_sources_the_daemon_stops_and_audio_ended_for_a_file_that_ended(
    tmp_path: Path,
) -> None:
    speech = trim(synth_audio("alice", "Somebody is talking in the living room right now."))
    wav = write_wav(tmp_path / "talk.wav", np.concatenate([speech, silence(0.5)]))
    moved = shutil.copy(wav, tmp_path / "talk-again.wav")
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    with RtspServer(wav, loop=True) as camera:
        living = file_source(wav, "living", loop=True)
        sources = (
            living
            + file_source(wav, "once", realtime=False, loop=False)
            + f'[[sources]]\nname = "door"\nkind = "url"\nurl = "{camera.url}"\n'
        )
        extra = f'[embedded_broker]\nport = {free_port()}\nimplementation = "mosquitto"\n'
        config = write_config(tmp_path / "config.toml", model, sources, 'broker = "embedded"', extra)
        daemon = DaemonProcess(config, tmp_path / "daemon.log")
        try:
            ready = ("source once: audio ended", "source living: online", "source door: online")
            daemon.wait_log(lambda t: all(said in t for said in ready))
            # A reload that changes the living room's file restarts that stream only.
            config.write_text(config.read_text().replace(living, file_source(Path(moved), "living", loop=True)))
            daemon.signal(signal.SIGHUP)
            daemon.wait_log(lambda t: "reloaded:" in t)
            daemon.signal(signal.SIGTERM)
            assert daemon.wait(60) == 0
        finally:
            daemon.kill()
    log = daemon.text()
    reload_at = log.index("reloaded:")
    assert log[:reload_at].count("source living: stopped") == 1, log[-3000:]
    assert log[reload_at:].count("source living: stopped") == 1 and "source door: stopped" in log, log[-3000:]
    assert log.count("source once: audio ended") == 1, log[-3000:]
    assert "source living: audio ended" not in log and "source door: audio ended" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
