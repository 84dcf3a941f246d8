"""A private PulseAudio server whose null sink's monitor is the default source: a virtual microphone.

What `play()` sends into the sink is what PortAudio's `default`/`pulse` input devices record, in real time. The
server runs in the foreground as a child process in its own process group, with a private runtime directory,
so it never touches a user's session; a `/dev/zero` feeder keeps the sink clocked (an idle null sink makes the
first reads stall 1-2 s). PULSE_SERVER must be in os.environ before `pyaudio.PyAudio()` is created, so
`running_pulse` sets it (and restores the old environment on exit).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SINK = "vmic"


class PulseServer:
    """The server and its feeder; `kill()` drops it (the microphone vanishes), `start()` brings it back."""

    def __init__(self, rate: int = 16000, channels: int = 1) -> None:
        self.rate = rate
        self.channels = channels
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="spkidd-pulse-"))
        self.runtime_dir.chmod(0o700)
        socket_path = self.runtime_dir / "native"
        (self.runtime_dir / "pa.pa").write_text(
            f"load-module module-native-protocol-unix auth-anonymous=1 socket={socket_path}\n"
            f"load-module module-null-sink sink_name={SINK} rate={rate} channels={channels} format=s16le\n"
            f"set-default-sink {SINK}\n"
            f"set-default-source {SINK}.monitor\n"
        )
        self.env_vars = {
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_RUNTIME_PATH": str(self.runtime_dir),
            "PULSE_STATE_PATH": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{socket_path}",
        }
        self.env = {**os.environ, **self.env_vars}
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.procs.append(
            subprocess.Popen(
                ["pulseaudio", "-n", "-F", str(self.runtime_dir / "pa.pa"), "--daemonize=no",
                 "--exit-idle-time=-1", "--use-pid-file=no", "--enable-memfd=no", "--log-target=stderr",
                 "--log-level=error"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env=self.env, capture_output=True).returncode != 0:
            if self.procs[0].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("PulseAudio did not start")
            time.sleep(0.05)
        self.procs.append(
            subprocess.Popen(
                ["pacat", "--playback", f"--device={SINK}", "--raw", "--format=s16le", f"--rate={self.rate}",
                 f"--channels={self.channels}", "/dev/zero"],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
            )
        )  # fmt: skip

    def kill(self) -> None:
        """Stop the feeder and the server, each by its own process group, and reap them."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        self.procs = []

    def play(self, wav: Path) -> None:
        """Play a WAV into the virtual microphone and return once it has been played."""
        subprocess.run(["paplay", f"--device={SINK}", str(wav)], env=self.env, check=True, timeout=60)

    def cleanup(self) -> None:
        self.kill()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


@contextmanager
def running_pulse(rate: int = 16000, channels: int = 1) -> Iterator[PulseServer]:
    """A started server with a `vmic` null sink at `rate`, its monitor the default source, and PULSE_SERVER
    etc. in os.environ (restored on exit); everything is stopped and removed afterwards."""
    pulse = PulseServer(rate, channels)
    saved = {key: os.environ.get(key) for key in pulse.env_vars}
    try:
        pulse.start()
        os.environ.update(pulse.env_vars)
        yield pulse
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        pulse.cleanup()
