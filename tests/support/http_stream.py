"""An endless MP3 stream over HTTP, like internet radio or an IP camera's audio URL, for the source tests.

ffmpeg itself is the server (`-listen 1`): it loops a WAV in real time (`-re`) and serves one client at
http://127.0.0.1:PORT/live. Each `start()` serves one connection, which is what a reconnect test needs.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from types import TracebackType

from tests.support.mosquitto import free_port, wait_port


class HttpStream:
    def __init__(self, source: Path, port: int | None = None) -> None:
        self.source = source
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/live"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ffmpeg", "-nostdin", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(self.source),
             "-c:a", "libmp3lame", "-b:a", "128k", "-f", "mp3", "-listen", "1", self.url],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        # ffmpeg prints nothing when it listens, and serves a single client: wait_port does not connect.
        wait_port(self.port, lambda: self.proc is not None and self.proc.poll() is None)

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> HttpStream:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()
