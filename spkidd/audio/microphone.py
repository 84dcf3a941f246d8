"""A local microphone through PyAudio (PortAudio), as 16 kHz mono PCM chunks.

PortAudio calls us on its own audio thread; that callback only converts, resamples and hands chunks to a
thread-safe bounded queue (which wakes the event loop with call_soon_threadsafe), so it never blocks and the
event loop never touches PortAudio except through worker threads. A device that is missing, vanishes or stops
delivering is reopened with backoff: PortAudio is re-initialised each time, because it only scans devices then.
Only a source told not to wait for devices gives up, and only when there is no input device at all at its start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pyaudio
import soxr

from spkidd import SAMPLE_RATE
from spkidd.audio.backoff import Backoff, BackoffConfig
from spkidd.audio.base import AudioChunk, StatusCallback
from spkidd.audio.chunkqueue import ChunkQueue, QueuedSource, Rechunker, stream_chunks

WATCH_INTERVAL_S = 0.5
T = TypeVar("T")

_STDERR_LOCK = threading.Lock()
"""fd 2 belongs to the whole process: two sources opening devices at once must not interleave redirections."""


class DeviceError(Exception):
    """The requested input device is missing or cannot be opened (retried with backoff by the source)."""


class NoInputDevicesError(DeviceError):
    """PortAudio finds no input device at all; the message points at `spkidd devices`."""


@dataclass(frozen=True)
class InputDevice:
    index: int
    name: str
    channels: int
    default_rate: float
    is_default: bool


@contextlib.contextmanager
def quiet_stderr(log: logging.Logger) -> Iterator[None]:
    """Silence fd 2 while PortAudio probes ALSA/JACK (~80 harmless lines) and keep them at debug level.

    fd 2 is process-wide, so anything else written to it meanwhile (a fraction of a second) is demoted to
    that debug record too, never lost."""
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            noise = sink.read().decode(errors="replace").splitlines()
            if noise:
                log.debug("stderr while PortAudio started (%d lines):\n%s", len(noise), "\n".join(noise))


def _input_devices(pa: pyaudio.PyAudio) -> list[InputDevice]:
    try:
        default_index = int(pa.get_default_input_device_info()["index"])
    except OSError:
        default_index = -1
    devices = []
    for index in range(pa.get_device_count()):
        info = pa.get_device_info_by_index(index)
        channels = int(info["maxInputChannels"])
        if channels > 0:
            rate = float(info["defaultSampleRate"])
            devices.append(InputDevice(index, str(info["name"]), channels, rate, index == default_index))
    return devices


def list_input_devices() -> list[InputDevice]:
    """Every device PortAudio can record from. Blocking (it initialises PortAudio): call it from a thread."""
    log = logging.getLogger("spkidd.audio.microphone")
    with quiet_stderr(log):
        pa = pyaudio.PyAudio()
    try:
        return _input_devices(pa)
    finally:
        pa.terminate()


def resolve_device(devices: list[InputDevice], spec: str | int | None) -> InputDevice:
    """`spec`: None for the default device, an index (int or digits), or a case-insensitive (sub)string of
    the name; an exact name wins over a substring match, and the first match wins among several."""
    if not devices:
        raise NoInputDevicesError("no audio input devices (`spkidd devices` lists the ones PortAudio finds)")
    if spec is None or spec == "":
        for device in devices:
            if device.is_default:
                return device
        return devices[0]
    if isinstance(spec, int) or spec.strip().isdigit():
        index = int(spec)
        for device in devices:
            if device.index == index:
                return device
        raise DeviceError(f"no input device with index {index}")
    wanted = spec.casefold()
    exact = [d for d in devices if d.name.casefold() == wanted]
    partial = [d for d in devices if wanted in d.name.casefold()]
    if exact or partial:
        return (exact or partial)[0]
    names = ", ".join(repr(d.name) for d in devices)
    raise DeviceError(f"no input device matching {spec!r} (inputs: {names})")


def _supports(pa: pyaudio.PyAudio, device: InputDevice, rate: int, channels: int) -> bool:
    try:
        return bool(
            pa.is_format_supported(
                rate, input_device=device.index, input_channels=channels, input_format=pyaudio.paInt16
            )
        )
    except ValueError:
        return False


class _Capture:
    """One open PortAudio stream. Everything but `callback` runs in worker threads; `callback` runs on
    PortAudio's audio thread and must never block."""

    def __init__(
        self,
        queue: ChunkQueue,
        loop: asyncio.AbstractEventLoop,
        on_first_audio: Callable[[], None],
        gap: bool,
    ) -> None:
        self.queue = queue
        self.loop = loop
        self.on_first_audio = on_first_audio
        self.gap = gap
        self.rechunker = Rechunker()
        self.resampler: soxr.ResampleStream | None = None
        self.channels = 1
        self.rate = SAMPLE_RATE
        self.device: InputDevice | None = None
        self.pa: pyaudio.PyAudio | None = None
        self.stream: pyaudio.Stream | None = None
        self.opened_at = time.monotonic()
        self.first_audio: float | None = None
        self.last_audio: float | None = None
        self.overflows = 0
        self.error: str | None = None

    def open(self, spec: str | int | None, rate: int | None, block_s: float, log: logging.Logger) -> None:
        with quiet_stderr(log):
            self.pa = pyaudio.PyAudio()
            try:
                self.device = device = resolve_device(_input_devices(self.pa), spec)
                self.rate = rate or (
                    SAMPLE_RATE if _supports(self.pa, device, SAMPLE_RATE, 1) else int(device.default_rate)
                )
                self.channels = next((c for c in (1, 2) if _supports(self.pa, device, self.rate, c)), device.channels)
                if self.rate != SAMPLE_RATE:
                    self.resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE, 1, dtype="int16")
                self.stream = self.pa.open(
                    format=pyaudio.paInt16,
                    channels=self.channels,
                    rate=self.rate,
                    input=True,
                    input_device_index=device.index,
                    frames_per_buffer=max(1, round(self.rate * block_s)),
                    stream_callback=self.callback,
                    start=False,
                )
                self.opened_at = time.monotonic()
                self.stream.start_stream()
            except (OSError, ValueError) as exc:
                self.close(log)
                raise DeviceError(f"cannot open input device {spec!r}: {exc}") from exc

    def callback(self, in_data: bytes | None, frame_count: int, time_info: Any, status: int) -> tuple[None, int]:
        try:
            samples = np.frombuffer(in_data or b"", dtype="<i2")
            if self.channels > 1:
                samples = samples.reshape(-1, self.channels).mean(axis=1).round().astype(np.int16)
            if self.resampler is not None:
                samples = self.resampler.resample_chunk(samples)
            if status & pyaudio.paInputOverflow:
                self.overflows += 1
                self.gap = True
            for chunk in self.rechunker.feed(samples):
                self.queue.put(chunk, self.gap)
                self.gap = False
            self.last_audio = time.monotonic()
            if self.first_audio is None:
                self.first_audio = self.last_audio
                self.loop.call_soon_threadsafe(self.on_first_audio)
        except Exception as exc:  # the audio thread has nobody to raise to: the watcher reports it
            self.error = repr(exc)
            return None, pyaudio.paAbort
        return None, pyaudio.paContinue

    def is_active(self) -> bool:
        return self.stream is not None and bool(self.stream.is_active())

    def close(self, log: logging.Logger) -> None:
        """Stop and close the stream and PortAudio; a vanished device may fail here, which changes nothing."""
        if self.stream is not None:
            try:
                self.stream.stop_stream()
                self.stream.close()
            except OSError as exc:
                log.debug("closing the input stream failed: %s", exc)
            self.stream = None
        if self.pa is not None:
            self.pa.terminate()
            self.pa = None


async def _finish_in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run a PortAudio call in a thread; if we are cancelled meanwhile, still wait for it to finish, so a
    stream opened by a thread nobody waits for anymore can never be leaked."""
    task = asyncio.ensure_future(asyncio.to_thread(func, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        raise


class MicrophoneSource(QueuedSource):
    """Records `device` (index, name (sub)string, or None for the default) forever, reopening it with backoff.

    `rate`: open the device at this rate (None: 16 kHz if the device takes it, else its default rate); anything
    but 16 kHz is resampled with soxr. `stall_timeout_s`: no audio for this long means the device is gone.
    `wait_for_devices`: with no input device at all on the first try, keep retrying (the daemon: a USB microphone
    plugged in later is picked up) or, if False, end with NoInputDevicesError (`spkidd listen`: nobody is going to
    plug one in while it waits). Attributes `reconnects`, `dropped_chunks` and `overflows` count reopenings, chunks
    a slow consumer lost, and input overflows PortAudio reported.
    """

    def __init__(
        self,
        name: str,
        device: str | int | None = None,
        *,
        on_status: StatusCallback | None = None,
        rate: int | None = None,
        stall_timeout_s: float = 5.0,
        backoff: BackoffConfig | None = None,
        queue_chunks: int = 100,
        block_s: float = 0.03,
        wait_for_devices: bool = True,
    ) -> None:
        if stall_timeout_s <= 0:
            raise ValueError(f"stall_timeout_s must be > 0, got {stall_timeout_s}")
        if queue_chunks < 1:
            raise ValueError(f"queue_chunks must be >= 1, got {queue_chunks}")
        super().__init__(name, on_status, logging.getLogger(f"spkidd.audio.microphone.{name}"))
        self.device = device
        self.rate = rate
        self.stall_timeout_s = stall_timeout_s
        self.backoff_config = backoff or BackoffConfig()
        self.queue_chunks = queue_chunks
        self.block_s = block_s
        self.wait_for_devices = wait_for_devices
        self.reconnects = 0
        self.overflows = 0
        self.opened_device: InputDevice | None = None
        self.opened_rate: int | None = None

    async def chunks(self) -> AsyncIterator[AudioChunk]:
        loop = asyncio.get_running_loop()
        queue = ChunkQueue(self.queue_chunks, loop, self._log, dropped=self.dropped_chunks)
        self._queue = queue
        async with contextlib.aclosing(stream_chunks(queue, self._run(queue, loop))) as chunks:
            async for chunk in chunks:
                yield chunk

    async def _run(self, queue: ChunkQueue, loop: asyncio.AbstractEventLoop) -> None:
        """Open, watch, close and reopen the device forever; unexpected errors reach the consumer via the queue."""
        try:
            await self._reopen_forever(queue, loop)
        except NoInputDevicesError as exc:
            self._set_status(False, str(exc))
            queue.close(exc)
        except Exception as exc:
            self._log.exception("source failed")
            self._set_status(False, f"failed: {exc}")
            queue.close(exc)

    async def _reopen_forever(self, queue: ChunkQueue, loop: asyncio.AbstractEventLoop) -> None:
        backoff = Backoff(self.backoff_config)
        delivered_before = False
        attempt = 0
        while True:
            if attempt:
                self.reconnects += 1
            attempt += 1
            capture = _Capture(queue, loop, lambda: self._set_status(True, "receiving audio"), delivered_before)
            try:
                await _finish_in_thread(capture.open, self.device, self.rate, self.block_s, self._log)
                detail = await self._watch(capture)
            except DeviceError as exc:
                if attempt == 1 and not self.wait_for_devices and isinstance(exc, NoInputDevicesError):
                    raise
                detail = str(exc)
            finally:
                await _finish_in_thread(capture.close, self._log)
                self.overflows += capture.overflows
            delivered_before = delivered_before or capture.first_audio is not None
            healthy_s = 0.0 if capture.first_audio is None else time.monotonic() - capture.first_audio
            backoff.record_healthy(healthy_s)
            delay = backoff.next_delay()
            self._set_status(False, detail)
            self._log.warning("%s; reopening in %.1f s", detail, delay)
            await asyncio.sleep(delay)

    async def _watch(self, capture: _Capture) -> str:
        """Wait until the open stream fails, stops, or goes silent for stall_timeout_s; say why."""
        assert capture.device is not None
        self.opened_device, self.opened_rate = capture.device, capture.rate
        self._log.info(
            "recording %r (index %d) at %d Hz, %d channel(s)%s",
            capture.device.name,
            capture.device.index,
            capture.rate,
            capture.channels,
            "" if capture.rate == SAMPLE_RATE else f", resampled to {SAMPLE_RATE} Hz",
        )
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            if capture.error is not None:
                return f"capture failed: {capture.error}"
            if not await asyncio.to_thread(capture.is_active):
                return "input stream stopped"
            silent_s = time.monotonic() - (capture.last_audio or capture.opened_at)
            if silent_s > self.stall_timeout_s:
                return f"stalled: no audio for {self.stall_timeout_s:g} s"
