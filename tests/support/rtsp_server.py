"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving a WAV at rtsp://127.0.0.1:PORT/test.

This file has two roles. Run as a script with Debian's /usr/bin/python3 (which has `gi`; the project venv
does not), it is the server. Imported from a test, `RtspServer` starts that script as a child process in its
own process group and can kill it, freeze it (SIGSTOP) and start it again on the same port, so the sources'
reconnect and stall handling are tested against a real server, not a mock.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path
from types import TracebackType

SYSTEM_PYTHON = "/usr/bin/python3"
MOUNT = "/test"


def launch_line(wav: str, loop: bool) -> str:
    """L16 at 16 kHz keeps the path bit-exact, so a test can demand the exact samples back.

    `loop` replays the raw PCM twin of the WAV forever (an endless camera); a one-shot stream ends at the
    file's end like a clip.
    """
    if loop:
        src = (
            f"multifilesrc location={raw_twin(Path(wav))} loop=true ! rawaudioparse use-sink-caps=false format=pcm "
            "pcm-format=s16le sample-rate=16000 num-channels=1"
        )
    else:
        src = f"filesrc location={wav} ! wavparse"
    return (
        f"( {src} ! audioconvert ! audioresample ! audio/x-raw,format=S16BE,rate=16000,channels=1 "
        "! rtpL16pay name=pay0 pt=96 )"
    )


def raw_twin(wav: Path) -> Path:
    return wav.with_suffix(".raw")


def write_raw_twin(wav: Path) -> None:
    """The looping server reads headerless PCM, so a WAV header is not replayed as a click every loop."""
    with wave.open(str(wav), "rb") as handle:
        if (handle.getframerate(), handle.getnchannels(), handle.getsampwidth()) != (16000, 1, 2):
            raise ValueError(f"{wav}: the looping RTSP server needs 16 kHz mono 16-bit")
        raw_twin(wav).write_bytes(handle.readframes(handle.getnframes()))


class RtspServer:
    """The server process for one WAV on one port; `start`, `kill`, `freeze`/`thaw`, `stop` (idempotent)."""

    def __init__(self, source: Path, *, loop: bool = True, port: int | None = None) -> None:
        # Imported here: the script role runs under Debian's python3, which has neither the venv nor `tests`.
        from tests.support.mosquitto import free_port

        self.source = source
        self.loop = loop
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}{MOUNT}"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the server and wait for its READY line; retries while the old socket is still being freed."""
        if self.loop and not raw_twin(self.source).exists():
            write_raw_twin(self.source)
        deadline = time.monotonic() + timeout_s
        while True:
            proc = subprocess.Popen(
                [SYSTEM_PYTHON, __file__, str(self.port), str(self.source), "loop" if self.loop else "once"],
                stdout=subprocess.PIPE,
                start_new_session=True,
            )
            assert proc.stdout is not None
            ready, _, _ = select.select([proc.stdout], [], [], max(0.1, deadline - time.monotonic()))
            line = proc.stdout.readline().decode().strip() if ready else "(no answer)"
            if line == f"READY {self.port}":
                self.proc = proc
                return
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            proc.stdout.close()
            if time.monotonic() > deadline:
                raise RuntimeError(f"RTSP server did not start on port {self.port}: {line!r}")
            time.sleep(0.2)

    def kill(self) -> None:
        """Drop the server at once, as a camera losing power would."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.thaw()
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        self.proc = None

    def freeze(self) -> None:
        """Hang the server (its sockets stay open but nothing moves), as a wedged camera does."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        self.kill()

    def __enter__(self) -> RtspServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _serve(port: int, wav: str, loop: bool) -> None:
    import gi

    gi.require_version("Gst", "1.0")
    gi.require_version("GstRtspServer", "1.0")
    from gi.repository import GLib, Gst, GstRtspServer

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch_line(wav, loop))
    factory.set_shared(True)
    server.get_mount_points().add_factory(MOUNT, factory)
    if server.attach(None) == 0:
        print("FAILED bind", flush=True)
        sys.exit(1)
    print("READY", server.get_bound_port(), flush=True)
    main_loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, main_loop.quit)
    main_loop.run()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), sys.argv[2], sys.argv[3] == "loop")
