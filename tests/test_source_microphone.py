"""MicrophoneSource and `spkidd devices` against a real (private) PulseAudio null sink as the microphone."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spkidd.audio.base import AudioChunk
from spkidd.audio.microphone import DeviceError, InputDevice, MicrophoneSource, list_input_devices, resolve_device
from spkidd.events import SourceStatus
from tests.support.daemon import SPKIDD
from tests.support.pulse import PulseServer, running_pulse
from tests.support.source_audio import best_alignment, dominant_frequency, synth_speech, tone, write_wav
from tests.support.source_recorder import FAST_BACKOFF, SourceRecorder, assert_timestamps, audio_of

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def pulse16k() -> Iterator[PulseServer]:
    with running_pulse(rate=16000) as pulse:
        yield pulse


async def record_while_playing(
    pulse: PulseServer, recorder: SourceRecorder, source: MicrophoneSource, wav: Path
) -> None:
    """Start recording, wait until audio flows (PulseAudio's first read can take ~1-2 s), play, keep 0.5 s."""
    recorder.start(source)
    try:
        await recorder.wait_for(lambda: len(recorder.chunks) >= 5)
        await asyncio.to_thread(pulse.play, wav)
        played = len(recorder.chunks)
        await recorder.wait_for(lambda: len(recorder.chunks) >= played + 17)
    finally:
        await recorder.stop()


async def test_records_what_is_played_into_the_virtual_microphone(pulse16k: PulseServer, tmp_path: Path) -> None:
    reference = synth_speech(tmp_path / "speech.wav", "Somebody is talking to the kitchen microphone right now.")
    recorder = SourceRecorder()
    source = MicrophoneSource("kitchen", None, on_status=recorder.on_status, backoff=FAST_BACKOFF)
    await record_while_playing(pulse16k, recorder, source, tmp_path / "speech.wav")
    assert_timestamps(recorder.chunks)
    assert not any(c.discontinuity for c in recorder.chunks)
    assert source.opened_rate == 16000 and source.opened_device is not None
    assert source.opened_device.is_default
    lag, corr = best_alignment(audio_of(recorder.chunks), reference)
    assert corr > 0.98, corr
    assert lag + len(reference) <= len(audio_of(recorder.chunks))
    assert recorder.statuses[0] == SourceStatus("kitchen", True, "receiving audio")


async def test_native_48k_device_is_resampled_to_16k(tmp_path: Path) -> None:
    wav = tmp_path / "tone48k.wav"
    write_wav(wav, tone(440.0, 1.5, rate=48000), rate=48000)
    with running_pulse(rate=48000) as pulse:
        recorder = SourceRecorder()
        source = MicrophoneSource("hall", "pulse", rate=48000, backoff=FAST_BACKOFF)
        await record_while_playing(pulse, recorder, source, wav)
    assert source.opened_rate == 48000
    assert source.opened_device is not None and source.opened_device.name == "pulse"
    assert_timestamps(recorder.chunks)
    audio = audio_of(recorder.chunks)
    assert abs(dominant_frequency(audio) - 440.0) < 3.0
    # The tone lasts 1.5 s of 16 kHz samples: a wrong rate ratio would stretch or squeeze it.
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 8000)
    assert (loud[-1] - loud[0]) / 16000 == pytest.approx(1.5, abs=0.05)


async def test_vanished_device_is_reopened_with_a_discontinuity() -> None:
    with running_pulse(rate=16000) as pulse:
        recorder = SourceRecorder()
        source = MicrophoneSource("den", "pulse", on_status=recorder.on_status, backoff=FAST_BACKOFF)
        recorder.start(source)
        try:
            await recorder.wait_for(lambda: len(recorder.chunks) >= 10)
            await asyncio.to_thread(pulse.kill)
            await recorder.wait_for(lambda: not recorder.statuses[-1].online)
            before = len(recorder.chunks)
            await asyncio.sleep(1.0)  # reopening fails while the server is gone: retried with backoff
            await asyncio.to_thread(pulse.start)
            await recorder.wait_for(lambda: len(recorder.chunks) >= before + 10)
        finally:
            await recorder.stop()
    assert [s.online for s in recorder.statuses] == [True, False, True]
    assert source.reconnects >= 2
    assert recorder.chunks[before].discontinuity
    assert sum(c.discontinuity for c in recorder.chunks) == 1
    assert_timestamps(recorder.chunks)


async def test_missing_device_is_retried_and_reported_offline(pulse16k: PulseServer) -> None:
    recorder = SourceRecorder()
    source = MicrophoneSource("attic", "no-such-microphone", on_status=recorder.on_status, backoff=FAST_BACKOFF)
    recorder.start(source)
    try:
        await recorder.wait_for(lambda: source.reconnects >= 2)
    finally:
        await recorder.stop()
    assert recorder.chunks == []
    assert len(recorder.statuses) == 1 and not recorder.statuses[0].online
    assert "no input device matching 'no-such-microphone'" in recorder.statuses[0].detail


def test_list_input_devices_and_the_devices_command(pulse16k: PulseServer) -> None:
    devices = list_input_devices()
    names = [d.name for d in devices]
    assert "pulse" in names and "default" in names
    assert [d.name for d in devices if d.is_default] == ["default"]
    assert all(d.channels > 0 and d.default_rate > 0 for d in devices)
    result = subprocess.run([SPKIDD, "devices"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "│" in line]
    assert [("*" in row) for row in rows if "pulse" in row] == [False]
    assert [("*" in row) for row in rows if " default " in row] == [True]
    assert "ALSA lib" not in result.stderr


def test_resolve_device_by_index_name_and_substring() -> None:
    devices = [
        InputDevice(0, "HDA Intel PCH: ALC887 Analog (hw:0,0)", 2, 48000.0, False),
        InputDevice(3, "USB Audio Device: Mic (hw:1,0)", 1, 44100.0, False),
        InputDevice(7, "default", 32, 44100.0, True),
    ]
    assert resolve_device(devices, None).index == 7
    assert resolve_device(devices, 3).index == 3
    assert resolve_device(devices, "3").index == 3
    assert resolve_device(devices, "usb audio").index == 3
    assert resolve_device(devices, "DEFAULT").index == 7
    with pytest.raises(DeviceError, match="index 5"):
        resolve_device(devices, 5)
    with pytest.raises(DeviceError, match="no input device matching 'webcam'"):
        resolve_device(devices, "webcam")
    with pytest.raises(DeviceError, match="no audio input devices"):
        resolve_device([], None)


async def test_slow_consumer_loses_the_oldest_audio_not_memory(pulse16k: PulseServer) -> None:
    source = MicrophoneSource("porch", None, backoff=FAST_BACKOFF, queue_chunks=5)
    received: list[AudioChunk] = []
    depths: list[int] = []
    async with asyncio.timeout(60), contextlib.aclosing(source.chunks()) as chunks:
        async for chunk in chunks:
            received.append(chunk)
            depths.append(source.queued_chunks)
            if len(received) >= 30:
                break
            await asyncio.sleep(0.1)  # three times slower than real time
    assert max(depths) <= 5
    assert source.dropped_chunks > 0
    assert any(c.discontinuity for c in received[1:])
    assert_timestamps(received)
