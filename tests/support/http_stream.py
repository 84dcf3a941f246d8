"""An endless MP3 stream over HTTP, like internet radio or an IP camera's audio URL, for the source tests.

ffmpeg itself is the server (`-listen 1`): it loops a WAV in real time (`-re`) and serves one client at
http://127.0.0.1:PORT/live. Each `start()` serves one connection, which is what a reconnect test needs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from tests.support.mosquitto import free_port


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
        # ffmpeg prints nothing when it listens: wait until the port is bound (visible in /proc/net/tcp).
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"HTTP stream did not start on port {self.port}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        hex_port = f":{self.port:04X}"
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with open(table) as handle:
                for line in handle.readlines()[1:]:
                    fields = line.split()
                    if fields[1].endswith(hex_port) and fields[3] == "0A":  # 0A: LISTEN
                        return True
        return False

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
