"""Paced and unpaced file replay, and turning source specs into sources."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES, AudioChunk
from spkidd.audio.decode import AudioDecodeError, load_audio
from spkidd.audio.replay import ReplaySource, float_to_pcm, to_chunkable_pcm
from spkidd.audio.sources import SourceSpecError, make_source
from spkidd.events import SourceStatus
from tests.support.streaming import write_wav

CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


async def collect(source: ReplaySource, limit: int | None = None) -> list[tuple[AudioChunk, float]]:
    out = []
    async for chunk in source.chunks():
        out.append((chunk, time.monotonic()))
        if limit is not None and len(out) >= limit:
            break
    return out


async def test_unpaced_replay_delivers_the_file_in_stamped_chunks(tmp_path: Path) -> None:
    audio = tone(2.02)
    path = write_wav(tmp_path / "tone.wav", audio)
    statuses: list[SourceStatus] = []
    chunks = await collect(ReplaySource("t", path, realtime=False, on_status=statuses.append))
    stored, _ = sf.read(str(path), dtype="int16")
    assert len(chunks) == 68
    delivered = np.concatenate([c.samples for c, _ in chunks])
    assert np.array_equal(delivered[: len(stored)], stored) and not delivered[len(stored) :].any()
    assert all(c.samples.dtype == np.int16 and len(c.samples) == CHUNK_SAMPLES for c, _ in chunks)
    assert [c.start_s for c, _ in chunks] == pytest.approx([i * CHUNK_S for i in range(68)])
    assert [s.online for s in statuses] == [True, False]


async def test_paced_replay_follows_the_clock_without_drift(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(1.5))
    source = ReplaySource("t", path, realtime=True)
    chunks = await collect(source)
    assert source.started_at is not None
    for i, (chunk, arrived) in enumerate(chunks):
        # never early: a chunk exists only once its 30 ms have been "heard"
        assert arrived >= source.started_at + (i + 1) * CHUNK_S - 0.002
        assert chunk.start_s == pytest.approx(i * CHUNK_S)
    # and no accumulated drift: the end is due at 1.5 s, generous slack for a loaded machine
    assert chunks[-1][1] - source.started_at < 1.5 + 1.0


async def test_looping_keeps_audio_time_counting(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(0.3))
    chunks = await collect(ReplaySource("t", path, realtime=False, loop=True), limit=35)
    assert [c.start_s for c, _ in chunks] == pytest.approx([i * CHUNK_S for i in range(35)])
    assert np.array_equal(chunks[0][0].samples, chunks[10][0].samples)


async def test_shared_samples_are_not_copied() -> None:
    pcm = (np.arange(CHUNK_SAMPLES * 4) % 1000).astype(np.int16)
    chunks = await collect(ReplaySource.from_samples("t", pcm, realtime=False))
    assert len(chunks) == 4 and all(np.shares_memory(c.samples, pcm) for c, _ in chunks)


async def test_an_undecodable_file_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF this is no audio at all" * 10)
    statuses: list[SourceStatus] = []
    with pytest.raises(AudioDecodeError):
        await collect(ReplaySource("t", bad, realtime=False, on_status=statuses.append))
    assert len(statuses) == 1 and not statuses[0].online and "bad.wav" in statuses[0].detail


def test_source_specs(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "tone.wav", tone(0.5))
    replay = make_source(str(path), "kitchen", realtime=False)
    assert isinstance(replay, ReplaySource) and replay.name == "kitchen" and replay.realtime is False
    assert isinstance(make_source(f"file://{path}", "k"), ReplaySource)
    stream = make_source("rtsp://127.0.0.1:8554/cam", "door")
    assert type(stream).__name__ == "FfmpegSource" and stream.name == "door"
    for spec, device in (("mic", None), ("mic:3", 3), ("mic:USB Audio", "USB Audio")):
        mic = make_source(spec, "desk")
        assert type(mic).__name__ == "MicrophoneSource" and getattr(mic, "device", "?") == device
    with pytest.raises(SourceSpecError, match="not an existing file"):
        make_source(str(tmp_path / "missing.wav"), "k")
    with pytest.raises(SourceSpecError, match="unsupported URL scheme 'gopher'"):
        make_source("gopher://example/x", "k")


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
async def test_other_rates_are_resampled_while_streaming(tmp_path: Path, rate: int) -> None:
    t = np.arange(int(1.3 * rate)) / rate
    audio = (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32)
    path = tmp_path / f"tone{rate}.wav"
    sf.write(str(path), audio, rate, subtype="PCM_16")
    chunks = await collect(ReplaySource("t", path, realtime=False))
    streamed = np.concatenate([c.samples for c, _ in chunks]).astype(np.float32) / 32768.0
    whole = load_audio(path)
    assert len(whole) <= len(streamed) < len(whole) + CHUNK_SAMPLES
    assert np.abs(streamed[: len(whole)] - whole).max() < 2e-3


def test_stopping_a_file_replay_mid_read_never_crashes_the_decoder(tmp_path: Path) -> None:
    """Cancelling the consumer while a worker thread decodes a block must not close the file under it (it was a
    libsndfile segfault). In a child process, so a crash is a failure rather than a dead test run."""
    rate = 44100
    t = np.arange(rate * 60) / rate
    path = tmp_path / "long.flac"
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate, format="FLAC")
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.replay_cancel", str(path), "60"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0 and "survived" in child.stdout, (child.returncode, child.stderr[-2000:])


@pytest.mark.parametrize("loop", [False, True])
async def test_iterating_a_replay_again_resumes_where_it_stopped(tmp_path: Path, loop: bool) -> None:
    """A pipeline rebuilt after a failure iterates its source again: it must neither replay what was heard nor
    restart the time line (it replayed from 0 and reused utterance ids)."""
    audio = tone(1.0)
    path = write_wav(tmp_path / "tone.wav", audio)
    whole = [c for c, _ in await collect(ReplaySource("desk", path, realtime=False))]
    source = ReplaySource("desk", path, realtime=False, loop=loop)
    first = [c for c, _ in await collect(source, limit=10)]
    again = [c for c, _ in await collect(source, limit=len(whole) + 5 if loop else None)]
    assert [c.start_s for c in first + again] == pytest.approx([i * CHUNK_S for i in range(len(first + again))])
    expected = (whole * 3)[: len(first + again)]
    assert all(np.array_equal(c.samples, e.samples) for c, e in zip(first + again, expected, strict=True))
    assert len(first + again) == (len(whole) + 15 if loop else len(whole))


def test_samples_are_converted_block_by_block_as_in_one_piece() -> None:
    """Long recordings are converted without float temporaries of their size, to the same samples."""
    audio = (np.random.default_rng(0).standard_normal(2_500_003) * 0.5).astype(np.float32)
    whole = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16)
    assert np.array_equal(float_to_pcm(audio), whole)
    padded = to_chunkable_pcm(audio)
    assert len(padded) % CHUNK_SAMPLES == 0 and np.array_equal(padded[: len(audio)], whole)
    assert not padded[len(audio) :].any()
