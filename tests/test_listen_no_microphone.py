"""A machine with no audio input device at all: `spkidd listen --source mic` says so and exits at once, while the
daemon's microphone source keeps waiting for one (a USB microphone plugged in later is picked up).

No device is what PortAudio sees when ALSA's configuration names only a PCM that cannot be opened (a card that
does not exist): the hardware cards, `default` and `pulse` all go unlisted. (An empty configuration makes PortAudio
abort on an assertion.) Only an OSS /dev/dsp, which no environment variable hides, could still show up."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.daemon import SPKIDD, DaemonProcess, random_model, write_config
from tests.support.mosquitto import running_mosquitto

pytestmark = pytest.mark.timeout(120)


def no_input_devices(directory: Path) -> dict[str, str]:
    """Environment variables under which PortAudio finds no input device (see the module's docstring)."""
    config = directory / "asound.conf"
    config.write_text("pcm.absent {\n  type hw\n  card 99\n}\n")
    return {"ALSA_CONFIG_PATH": str(config), "PULSE_SERVER": f"unix:{directory / 'no-pulse'}"}


def test_devices_finds_none_in_this_environment(tmp_path: Path) -> None:
    """The premise of the other tests, as the user would check it."""
    proc = subprocess.run(
        [SPKIDD, "devices"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **no_input_devices(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "no audio input devices found"


def test_listen_on_a_machine_without_microphone_says_so_and_exits(tmp_path: Path) -> None:
    """Exit 1, as for any source that fails under listen, with the reason and where to look, and no retry."""
    model = random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    began = time.monotonic()
    proc = subprocess.run(
        [SPKIDD, "listen", str(model), "--source", "mic", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **no_input_devices(tmp_path)},
    )
    took = time.monotonic() - began
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "error: source failed: no audio input devices" in proc.stderr
    assert "`spkidd devices`" in proc.stderr
    assert "reopening" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert took < 30, took


def test_the_daemon_keeps_waiting_for_a_microphone(tmp_path: Path) -> None:
    """The same machine under `spkidd run`: the source is retried with backoff and the daemon stays up."""
    model = random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    sources = '[[sources]]\nname = "desk"\nkind = "mic"\n'
    with running_mosquitto(tmp_path) as broker:
        mqtt = f'broker = "external"\nhost = "127.0.0.1"\nport = {broker.port}\n'
        config = write_config(tmp_path / "config.toml", model, sources, mqtt)
        daemon = DaemonProcess(config, tmp_path / "daemon.log", env=no_input_devices(tmp_path))
        try:
            log = daemon.wait_log(lambda text: text.count("no audio input devices") >= 3, timeout=60)
            assert daemon.process.poll() is None
        finally:
            daemon.kill()
    assert "spkidd testhouse ready" in log, log[-3000:]
    assert log.count("reopening in") >= 3 and "source failed" not in log, log[-3000:]
