"""FfmpegSource against a real RTSP server (gst-rtsp-server) and real files, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk
from spkidd.audio.ffmpeg import FfmpegSource, SourceError, is_live_url, redact_url
from spkidd.events import SourceStatus
from tests.support.ffmpeg_procs import ffmpeg_children
from tests.support.http_stream import HttpStream
from tests.support.mosquitto import free_port
from tests.support.rtsp_server import RtspServer
from tests.support.source_audio import best_alignment, synth_speech
from tests.support.source_recorder import FAST_BACKOFF, SourceRecorder, assert_timestamps, audio_of

pytestmark = pytest.mark.timeout(60)

TEXT = "The quick brown fox jumps over the lazy dog, then listens to the streaming source."


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("ffmpeg-audio") / "speech.wav"
    return path, synth_speech(path, TEXT)


@pytest.fixture
def looping_server(speech_wav: tuple[Path, np.ndarray]) -> Iterator[RtspServer]:
    with RtspServer(speech_wav[0], loop=True) as server:
        yield server


async def test_rtsp_stream_delivers_the_wav_samples(speech_wav: tuple[Path, np.ndarray]) -> None:
    path, reference = speech_wav
    recorder = SourceRecorder()
    with RtspServer(path, loop=False) as server:
        source = FfmpegSource("cam", server.url, on_status=recorder.on_status, backoff=FAST_BACKOFF)
        assert source.live
        recorder.start(source)
        try:
            # Until the whole clip is in, or the one-shot stream ended (RTP may drop a last partial packet).
            await recorder.wait_for(
                lambda: (
                    len(recorder.chunks) * CHUNK_SAMPLES >= len(reference)
                    or (len(recorder.statuses) > 1 and not recorder.statuses[-1].online)
                )
            )
        finally:
            await recorder.stop()
    chunks = recorder.chunks
    assert_timestamps(chunks)
    assert not chunks[0].discontinuity
    assert len(chunks) * CHUNK_SAMPLES > 0.95 * len(reference)
    lag, corr = best_alignment(audio_of(chunks), reference[: len(chunks) * CHUNK_SAMPLES - 1600])
    assert corr > 0.99, corr
    assert lag < 1600, lag
    assert recorder.statuses[0] == SourceStatus("cam", True, "receiving audio")
    assert ffmpeg_children() == {}


async def test_rtsp_server_killed_and_restarted_reconnects(
    speech_wav: tuple[Path, np.ndarray], looping_server: RtspServer
) -> None:
    _, reference = speech_wav
    recorder = SourceRecorder()
    source = FfmpegSource("cam", looping_server.url, on_status=recorder.on_status, backoff=FAST_BACKOFF)
    recorder.start(source)
    try:
        await recorder.wait_for(lambda: len(recorder.chunks) >= 30)
        looping_server.kill()
        await recorder.wait_for(lambda: not recorder.statuses[-1].online)
        assert "exited" in recorder.statuses[-1].detail
        before = len(recorder.chunks)
        await asyncio.sleep(0.5)  # let a reconnect attempt or two fail against the dead port
        await asyncio.to_thread(looping_server.start)
        await recorder.wait_for(lambda: len(recorder.chunks) >= before + 60)
        assert recorder.statuses[-1].online
        assert source.reconnects >= 1
        children = ffmpeg_children()
        assert len(children) == 1 and "Z" not in children.values(), children
    finally:
        await recorder.stop()
    assert ffmpeg_children() == {}
    chunks = recorder.chunks
    assert_timestamps(chunks)
    assert [c.discontinuity for c in chunks].count(True) == 1
    assert chunks[before].discontinuity
    _, corr = best_alignment(audio_of(chunks[before:]), reference[:16000])
    assert corr > 0.99, corr


async def test_stalled_server_is_detected_and_reconnected(looping_server: RtspServer) -> None:
    recorder = SourceRecorder()
    stall_s = 1.5
    source = FfmpegSource(
        "cam", looping_server.url, on_status=recorder.on_status, backoff=FAST_BACKOFF, stall_timeout_s=stall_s
    )
    recorder.start(source)
    try:
        await recorder.wait_for(lambda: len(recorder.chunks) >= 20)
        looping_server.freeze()
        frozen_at = time.monotonic()
        await recorder.wait_for(lambda: not recorder.statuses[-1].online, timeout_s=stall_s + 10)
        went_offline, status = recorder.status_at[-1], recorder.statuses[-1]
        # Generous bound (a loaded 2-core machine), but far below "never" which is what no timeout gives.
        assert went_offline - frozen_at < stall_s + 5
        assert status.detail, status
        before = len(recorder.chunks)
        await asyncio.sleep(stall_s)
        looping_server.thaw()
        await recorder.wait_for(lambda: len(recorder.chunks) >= before + 30, timeout_s=25)
        assert source.reconnects >= 1
    finally:
        await recorder.stop()
    assert recorder.chunks[before].discontinuity
    assert ffmpeg_children() == {}


async def test_slow_consumer_drops_oldest_with_bounded_queue(
    looping_server: RtspServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="spkidd.audio.ffmpeg")
    source = FfmpegSource("cam", looping_server.url, backoff=FAST_BACKOFF, queue_chunks=10)
    received: list[AudioChunk] = []
    depths: list[int] = []
    async with asyncio.timeout(30), contextlib.aclosing(source.chunks()) as chunks:
        async for chunk in chunks:
            received.append(chunk)
            depths.append(source.queued_chunks)
            if len(received) >= 40:
                break
            await asyncio.sleep(0.1)  # a consumer 3x slower than real time
    assert max(depths) <= 10
    assert source.dropped_chunks > 0
    assert any(c.discontinuity for c in received[1:])
    assert not received[0].discontinuity
    assert_timestamps(received)
    assert any("dropped" in r.getMessage() for r in caplog.records)
    assert ffmpeg_children() == {}


@pytest.mark.parametrize("codec", [("ogg", "libvorbis"), ("mp3", "libmp3lame")])
async def test_file_decodes_and_ends_at_eof(
    speech_wav: tuple[Path, np.ndarray], tmp_path: Path, codec: tuple[str, str]
) -> None:
    wav, reference = speech_wav
    encoded = tmp_path / f"speech.{codec[0]}"
    subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), "-c:a", codec[1], str(encoded)], check=True
    )
    statuses: list[SourceStatus] = []
    source = FfmpegSource("file", str(encoded), on_status=statuses.append, queue_chunks=4)
    assert not source.live
    async with asyncio.timeout(30):
        chunks = [c async for c in source.chunks()]
    assert_timestamps(chunks)
    received = audio_of(chunks)
    assert abs(len(received) - len(reference)) < 2 * 1152 + CHUNK_SAMPLES
    _, corr = best_alignment(received, reference)
    assert corr > 0.95, corr
    assert not any(c.discontinuity for c in chunks)
    assert source.reconnects == 0 and source.dropped_chunks == 0
    assert [s.online for s in statuses] == [True, False]
    assert statuses[-1].detail == "end of input"
    assert ffmpeg_children() == {}


async def test_unreadable_file_raises_instead_of_retrying(tmp_path: Path) -> None:
    bad = tmp_path / "not-audio.mp3"
    bad.write_bytes(b"this is not audio at all" * 50)
    for path in (bad, tmp_path / "missing.wav"):
        source = FfmpegSource("file", str(path))
        with pytest.raises(SourceError, match="ffmpeg exited with status"):
            async with asyncio.timeout(30):
                async for _ in source.chunks():
                    pass
        assert source.reconnects == 0
    assert ffmpeg_children() == {}


def test_live_url_detection_and_command() -> None:
    assert is_live_url("rtsp://cam.local/stream")
    assert is_live_url("https://radio.example/stream.mp3")
    assert not is_live_url("/srv/audio/kitchen.wav")
    assert not is_live_url("file:///srv/audio/kitchen.wav")
    assert not is_live_url("C:/audio/kitchen.wav")
    cmd = FfmpegSource("cam", "rtsp://127.0.0.1:8554/x", stall_timeout_s=2.0).command()
    assert cmd[cmd.index("-timeout") + 1] == "2000000"
    assert cmd[cmd.index("-rtsp_transport") + 1] == "tcp"
    assert cmd[-8:] == ["-f", "s16le", "-acodec", "pcm_s16le", "-ac", "1", "-ar", "16000", "-"][-8:]


async def test_http_stream_is_pulled_and_reconnected(speech_wav: tuple[Path, np.ndarray]) -> None:
    wav, reference = speech_wav
    recorder = SourceRecorder()
    with HttpStream(wav) as server:
        source = FfmpegSource("radio", server.url, on_status=recorder.on_status, backoff=FAST_BACKOFF)
        assert source.live and "-rw_timeout" in source.command()
        recorder.start(source)
        try:
            await recorder.wait_for(lambda: len(recorder.chunks) >= 60)
            server.kill()
            await recorder.wait_for(lambda: not recorder.statuses[-1].online)
            before = len(recorder.chunks)
            await asyncio.to_thread(server.start)
            await recorder.wait_for(lambda: len(recorder.chunks) >= before + 60)
        finally:
            await recorder.stop()
    assert ffmpeg_children() == {}
    chunks = recorder.chunks
    assert_timestamps(chunks)
    assert chunks[before].discontinuity and source.reconnects >= 1
    for piece in (audio_of(chunks[:60]), audio_of(chunks[before:])):
        _, corr = best_alignment(piece, reference[: len(piece) // 2])
        assert corr > 0.9, corr


async def test_credentials_never_reach_logs_or_status(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="spkidd.audio.ffmpeg")
    statuses: list[SourceStatus] = []
    url = f"rtsp://admin:hunter2@127.0.0.1:{free_port()}/stream"
    source = FfmpegSource("gate", url, on_status=statuses.append, backoff=FAST_BACKOFF)
    assert source.shown_url.startswith("rtsp://admin:***@127.0.0.1:")
    async with asyncio.timeout(30), contextlib.aclosing(source.chunks()) as chunks:
        iterator = aiter(chunks)
        waiting = asyncio.ensure_future(anext(iterator))
        while source.reconnects < 2:
            await asyncio.sleep(0.05)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
    assert "Connection refused" in caplog.text
    assert "hunter2" not in caplog.text
    assert statuses and all("hunter2" not in s.detail for s in statuses)
    assert ffmpeg_children() == {}
    assert redact_url("http://cam.local/audio") == "http://cam.local/audio"
