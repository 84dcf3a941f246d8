"""Any input ffmpeg can read (RTSP cameras, HTTP streams, files) as 16 kHz mono PCM chunks.

ffmpeg runs as a child process writing s16le to stdout, so decoding never touches the event loop and a broken
codec or camera can only kill ffmpeg, never the daemon. A live URL is pulled forever: ANY exit of ffmpeg
(even rc 0, which is what ffmpeg does when an RTSP server dies) or a stall is a disconnect, followed by a
respawn after a capped, jittered backoff. A plain file is read once and the iterator ends at its end.
ffmpeg never outlives the daemon, even one killed with SIGKILL (spkidd.lifetime).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from spkidd import SAMPLE_RATE
from spkidd.audio.backoff import Backoff, BackoffConfig
from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk, StatusCallback
from spkidd.audio.chunkqueue import ChunkQueue, QueuedSource, stream_chunks
from spkidd.lifetime import die_with_this_process

CHUNK_BYTES = CHUNK_SAMPLES * 2
TERMINATE_GRACE_S = 2.0
"""How long ffmpeg gets after SIGTERM to tear its session down (cameras have few session slots) before SIGKILL."""


class SourceError(Exception):
    """An input that cannot be read and will not get better by retrying (missing file, undecodable, no ffmpeg)."""


def is_live_url(url: str) -> bool:
    """A URL with a network scheme is a live stream; a plain path or file:// URL is a finite input.

    One-letter schemes are Windows drive letters, not protocols.
    """
    scheme = urlsplit(url).scheme.lower()
    return len(scheme) > 1 and scheme != "file"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ***: camera URLs carry credentials, logs and MQTT must not."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _send_signal(proc: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """os.kill, not proc.send_signal(): Popen.send_signal polls first, and that poll can reap an exited child
    before asyncio's child watcher does, which then reports status 255 instead of the real one."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)


@dataclass(frozen=True)
class _SessionEnd:
    """Why one ffmpeg run ended. `audio_s`: wall seconds it delivered audio; `eof`: ffmpeg finished cleanly."""

    detail: str
    audio_s: float
    eof: bool
    delivered: bool


class FfmpegSource(QueuedSource):
    """Pulls `url` through ffmpeg. Attributes `reconnects` and `dropped_chunks` count respawns and lost audio.

    `stall_timeout_s`: no bytes for this long means the stream hung (also passed to ffmpeg as the RTSP/HTTP
    socket timeout). `queue_chunks`: how much audio may wait for a slow consumer before the oldest is dropped
    (live) or ffmpeg is paused (files). `live`: override the guess made from the URL.
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        on_status: StatusCallback | None = None,
        stall_timeout_s: float = 5.0,
        backoff: BackoffConfig | None = None,
        queue_chunks: int = 100,
        live: bool | None = None,
        rtsp_transport: str = "tcp",
        input_args: Sequence[str] = (),
        ffmpeg: str = "ffmpeg",
    ) -> None:
        if stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        if queue_chunks < 1:
            raise ValueError(f"queue_chunks must be >= 1, got {queue_chunks}")
        super().__init__(name, on_status, logging.getLogger(f"spkidd.audio.ffmpeg.{name}"))
        self.url = url
        self.shown_url = redact_url(url)
        self._password = urlsplit(url).password
        self.live = is_live_url(url) if live is None else live
        self.stall_timeout_s = stall_timeout_s
        self.backoff_config = backoff or BackoffConfig()
        self.queue_chunks = queue_chunks
        self.rtsp_transport = rtsp_transport
        self.input_args = tuple(input_args)
        self.ffmpeg = ffmpeg
        self.reconnects = 0
        self.stderr_tail: deque[str] = deque(maxlen=20)
        self._outage_told = False
        """ffmpeg's lines about a failed attempt were logged once in this outage: the next attempts' same lines go
        to DEBUG (their last line is in each `reconnecting` warning), so a camera that is off for the night logs
        one line per attempt, not three."""

    def command(self) -> list[str]:
        """The ffmpeg command line; timeouts matter: without one a hung RTSP server hangs ffmpeg forever."""
        cmd = [self.ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "warning"]
        scheme = urlsplit(self.url).scheme.lower()
        timeout_us = str(int(self.stall_timeout_s * 1_000_000))
        if scheme in ("rtsp", "rtsps"):
            cmd += ["-rtsp_transport", self.rtsp_transport, "-timeout", timeout_us]
        elif scheme in ("http", "https"):
            cmd += ["-rw_timeout", timeout_us]
        cmd += [*self.input_args, "-i", self.url, "-vn", "-sn", "-dn"]
        cmd += ["-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
        return cmd

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        queue = ChunkQueue(self.queue_chunks, asyncio.get_running_loop(), self._log, dropped=self.dropped_chunks)
        self._queue = queue
        async with contextlib.aclosing(stream_chunks(queue, self._run(queue))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _run(self, queue: ChunkQueue) -> None:
        """Spawns ffmpeg again and again for a live URL; once for a file. Errors reach the consumer via the queue."""
        backoff = Backoff(self.backoff_config)
        delivered_before = False
        attempt = 0
        try:
            while True:
                if attempt:
                    self.reconnects += 1
                attempt += 1
                end = await self._session(queue, gap=delivered_before)
                delivered_before = delivered_before or end.delivered
                self._outage_told = not end.delivered
                if not self.live:
                    self._set_status(False, end.detail)
                    queue.close(None if end.eof else SourceError(f"{self.shown_url}: {end.detail}"))
                    return
                backoff.record_healthy(end.audio_s)
                delay = backoff.next_delay()
                self._set_status(False, end.detail)
                self._log.warning("%s: %s; reconnecting in %.1f s", self.shown_url, end.detail, delay)
                await asyncio.sleep(delay)
        except SourceError as exc:
            self._set_status(False, str(exc))
            queue.close(exc)
        except Exception as exc:
            self._log.exception("source failed")
            self._set_status(False, f"failed: {exc}")
            queue.close(exc)

    async def _session(self, queue: ChunkQueue, gap: bool) -> _SessionEnd:
        """One ffmpeg run: spawn, read exact chunks until EOF or stall, then terminate and reap it."""
        proc = await self._spawn()
        assert proc.stderr is not None
        stderr_task = asyncio.create_task(self._pump_stderr(proc.stderr))
        eof = False
        try:
            first_audio, detail, eof = await self._read_chunks(proc, queue, gap)
        finally:
            await self._stop(proc, exiting=eof)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TERMINATE_GRACE_S):
                    await stderr_task
        rc = proc.returncode
        if eof:
            last = f": {self.stderr_tail[-1]}" if self.stderr_tail and rc else ""
            detail = "end of input" if rc == 0 and not self.live else f"ffmpeg exited with status {rc}{last}"
        audio_s = 0.0 if first_audio is None else time.monotonic() - first_audio
        return _SessionEnd(detail, audio_s, eof=eof and rc == 0, delivered=first_audio is not None)

    async def _spawn(self) -> asyncio.subprocess.Process:
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                # A closed stdout stops ffmpeg only at its next write: one listening for a UDP stream that
                # never comes would outlive a killed daemon for good, and keep holding its port.
                preexec_fn=die_with_this_process(),
            )
        except FileNotFoundError as exc:
            raise SourceError(f"cannot run {self.ffmpeg!r}: {exc.strerror}") from exc
        self._log.debug("started ffmpeg pid %d for %s", proc.pid, self.shown_url)
        return proc

    async def _read_chunks(
        self, proc: asyncio.subprocess.Process, queue: ChunkQueue, gap: bool
    ) -> tuple[float | None, str, bool]:
        """Chunks into the queue until ffmpeg's output ends or stalls (then it is killed): when the first audio came
        (monotonic), why reading stopped, and whether the output ended."""
        assert proc.stdout is not None
        first_audio: float | None = None
        while True:
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancellation that
                # arrives together with data, and the source would then never stop.
                async with asyncio.timeout(self.stall_timeout_s):
                    data = await proc.stdout.readexactly(CHUNK_BYTES)
                eof = False
            except TimeoutError:
                _send_signal(proc, signal.SIGKILL)
                return first_audio, f"stalled: no audio for {self.stall_timeout_s:g} s", False
            except asyncio.IncompleteReadError as exc:
                data, eof = exc.partial, True
            if data:
                samples = np.zeros(CHUNK_SAMPLES, dtype=np.int16)
                samples[: len(data) // 2] = np.frombuffer(data[: len(data) // 2 * 2], dtype="<i2")
                if first_audio is None:
                    first_audio = time.monotonic()
                    self._outage_told = False
                    self._set_status(True, "receiving audio")
                if self.live:
                    queue.put(samples, gap)
                else:
                    await queue.put_wait(samples, gap)
                gap = False
            if eof:
                return first_audio, "", True

    async def _stop(self, proc: asyncio.subprocess.Process, exiting: bool) -> None:
        """Reap ffmpeg, no zombies: let it finish if it is `exiting` (its stdout ended), then SIGTERM (so it
        can send RTSP TEARDOWN), then SIGKILL, each after a grace period."""
        steps: tuple[signal.Signals | None, ...] = (signal.SIGTERM, signal.SIGKILL)
        for sig in ((None,) if exiting else ()) + steps:
            if proc.returncode is not None:
                break
            if sig is not None:
                _send_signal(proc, sig)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TERMINATE_GRACE_S):
                    await proc.wait()
        await proc.wait()
        if proc.stdout is not None:
            # Read what is left up to EOF: a paused pipe transport would otherwise never be closed.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TERMINATE_GRACE_S):
                    await proc.stdout.read()
        self._log.debug("ffmpeg pid %d exited with status %s", proc.pid, proc.returncode)

    async def _pump_stderr(self, stream: asyncio.StreamReader) -> None:
        """Every ffmpeg diagnostic line goes to this source's logger; the tail explains the next disconnect."""
        while True:
            try:
                raw = await stream.readline()
            except ValueError:
                self._log.warning("ffmpeg: (a stderr line longer than the stream limit was cut)")
                continue
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip().replace(self.url, self.shown_url)
            if self._password:
                line = line.replace(self._password, "***")
            if line:
                self.stderr_tail.append(line)
                self._log.log(logging.DEBUG if self._outage_told else logging.WARNING, "ffmpeg: %s", line)
