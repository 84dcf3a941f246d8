"""A replay of a file soundfile leaves to ffmpeg (MP3, M4A) is decoded a block at a time through ffmpeg's pipe: the
chunks of the whole file exactly, once or looped, paced or not; a file ffmpeg cannot decode or a damaged one is said
as the whole-file decode said it; no ffmpeg is left behind by a loop, a cancelled consumer or a stopped daemon."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd import SAMPLE_RATE
from spkidd.audio import decode
from spkidd.audio.base import AudioChunk
from spkidd.audio.decode import AudioDecodeError, DamagedAudioError, load_audio
from spkidd.audio.replay import ReplaySource, to_chunkable_pcm
from spkidd.events import SourceStatus
from spkidd.synthetic import synth_audio
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import REPO, DaemonProcess, file_source, random_model, write_config
from tests.support.ffmpeg_procs import ffmpeg_children
from tests.support.mosquitto import free_port
from tests.support.procs import alive, command, descendants

BLOCK_S = 1.37
"""AudioStream's blocks for these tests: block edges at odd places, several in a few seconds of speech."""


def _encoded(folder: Path, name: str, audio: np.ndarray) -> Path:
    """`audio` encoded by ffmpeg in the format `name`'s extension says."""
    wav = folder / f"{Path(name).stem}.source.wav"
    sf.write(wav, audio, SAMPLE_RATE, subtype="PCM_16")
    path = folder / name
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), str(path)], check=True)
    return path


def _speech(folder: Path, name: str) -> Path:
    """About 7 s of espeak-ng speech (two voices) as `name`."""
    turns = [synth_audio("alice", HELD_OUT_SENTENCES[0]), synth_audio("bob", HELD_OUT_SENTENCES[1])]
    return _encoded(folder, name, np.concatenate(turns))


def _tone(folder: Path, name: str, seconds: float) -> Path:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return _encoded(folder, name, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32))


async def _chunks(source: ReplaySource, limit: int | None = None) -> list[AudioChunk]:
    """The source's chunks (the first `limit`), its generator closed after as the pipeline closes it."""
    out = []
    async with contextlib.aclosing(source.chunks()) as chunks:
        async for chunk in chunks:
            out.append(chunk)
            if limit is not None and len(out) >= limit:
                break
    return out


async def _whole_file_chunks(path: Path) -> list[AudioChunk]:
    """The chunks of the replay before streaming: the whole file decoded by load_audio, as int16."""
    return await _chunks(ReplaySource.from_samples("whole", to_chunkable_pcm(load_audio(path)), realtime=False))


def _same(got: list[AudioChunk], expected: list[AudioChunk]) -> bool:
    return len(got) == len(expected) and all(
        np.array_equal(a.samples, b.samples) and a.start_s == pytest.approx(b.start_s)
        for a, b in zip(got, expected, strict=True)
    )


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "STREAM_BLOCK_S", BLOCK_S)


@pytest.mark.parametrize("name", ["speech.mp3", "speech.m4a"])
async def test_one_pass_gives_the_chunks_of_the_whole_file_exactly(tmp_path: Path, name: str) -> None:
    path = _speech(tmp_path, name)
    whole = await _whole_file_chunks(path)
    statuses: list[SourceStatus] = []

    streamed = await _chunks(ReplaySource("s", path, realtime=False, on_status=statuses.append))

    assert len(whole) * 0.03 > 5 * BLOCK_S
    assert _same(streamed, whole)
    assert [(s.online, s.detail) for s in statuses] == [(True, f"replaying {path}"), (False, "replay ended")]
    assert ffmpeg_children() == {}


@pytest.mark.parametrize("name", ["speech.mp3", "speech.m4a"])
async def test_two_loops_give_the_whole_file_twice_each_pass_a_new_ffmpeg(tmp_path: Path, name: str) -> None:
    path = _speech(tmp_path, name)
    whole = await _whole_file_chunks(path)
    source = ReplaySource("s", path, realtime=False, loop=True)
    streamed: list[AudioChunk] = []
    decoders: list[dict[int, str]] = []

    async with contextlib.aclosing(source.chunks()) as chunks:
        async for chunk in chunks:
            streamed.append(chunk)
            if len(streamed) % len(whole) == 1:
                decoders.append(ffmpeg_children())
            if len(streamed) == 2 * len(whole) + 1:
                break

    again = [AudioChunk(c.samples, c.start_s + len(whole) * 0.03) for c in whole]
    assert _same(streamed[: 2 * len(whole)], whole + again)
    assert np.array_equal(streamed[-1].samples, whole[0].samples)
    assert [len(d) for d in decoders] == [1, 1, 1] and len(set().union(*decoders)) == 3
    assert ffmpeg_children() == {}


async def test_a_paced_replay_gives_the_same_chunks_in_real_time(tmp_path: Path) -> None:
    path = _speech(tmp_path, "speech.mp3")
    whole = await _whole_file_chunks(path)
    source = ReplaySource("s", path, realtime=True)
    count = round(2 * BLOCK_S / 0.03)

    began = time.monotonic()
    streamed = await _chunks(source, limit=count)

    assert _same(streamed, whole[:count])
    assert time.monotonic() - began >= count * 0.03 - 0.05
    assert ffmpeg_children() == {}


async def test_a_file_ffmpeg_cannot_decode_is_refused_as_before(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("not audio at all\n" * 100)
    with pytest.raises(AudioDecodeError) as whole:
        load_audio(path)
    statuses: list[SourceStatus] = []

    with pytest.raises(AudioDecodeError) as streamed:
        await _chunks(ReplaySource("s", path, realtime=False, on_status=statuses.append))

    assert str(streamed.value) == str(whole.value) and "ffmpeg could not decode it" in str(whole.value)
    assert [(s.online, s.detail) for s in statuses] == [(False, f"cannot decode {path}: {whole.value}")]
    assert ffmpeg_children() == {}


async def test_a_damaged_file_is_said_as_the_whole_file_said_it_after_its_audio(tmp_path: Path) -> None:
    """The whole-file decode refused it before a chunk; a streamed one finds the damage where the audio stops, so
    the audio before it is heard first, then the source says what load_audio said."""
    path = _speech(tmp_path, "speech.mp3")
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data), 97):
        data[i] = 0xFF
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(bytes(data))
    with pytest.raises(DamagedAudioError) as whole:
        load_audio(damaged)
    statuses: list[SourceStatus] = []
    source = ReplaySource("s", damaged, realtime=False, loop=True, on_status=statuses.append)
    streamed: list[AudioChunk] = []

    with pytest.raises(AudioDecodeError) as said:
        async for chunk in source.chunks():
            streamed.append(chunk)

    heard = np.concatenate([c.samples for c in streamed])
    before = to_chunkable_pcm(whole.value.audio)
    assert str(said.value) == str(whole.value) and "damaged (truncated or corrupt)" in str(whole.value)
    assert np.array_equal(heard, before[: len(heard)]) and len(before) - len(heard) <= 480
    assert [(s.online, s.detail) for s in statuses] == [
        (True, f"replaying {damaged}"),
        (False, f"cannot decode {damaged}: {whole.value}"),
    ]
    assert ffmpeg_children() == {}


async def test_a_consumer_cancelled_mid_file_leaves_no_ffmpeg(tmp_path: Path) -> None:
    """Cancelled at any moment: while the file opens in a worker thread, while a worker reads a block, between.
    Looped, so that it is still playing when cancelled: unpaced, the 180 s were sometimes played to their end
    within the 0.1 s before the cancel (half of the runs on a fast hour)."""
    path = _tone(tmp_path, "long.mp3", 180.0)
    rng = random.Random(0)

    async def consume(source: ReplaySource) -> None:
        async for _ in source.chunks():
            pass

    for _ in range(30):
        task = asyncio.create_task(consume(ReplaySource("cut", path, realtime=False, loop=True)))
        await asyncio.sleep(rng.uniform(0.0, 0.1))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        deadline = time.monotonic() + 10
        while ffmpeg_children() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert ffmpeg_children() == {}


def test_cancelling_mid_read_many_times_never_crashes(tmp_path: Path) -> None:
    """As tests/test_replay.py's FLAC: a worker thread reading ffmpeg's pipe while its consumer is cancelled."""
    path = _tone(tmp_path, "long.mp3", 30.0)
    child = subprocess.run(
        [sys.executable, "-m", "tests.support.replay_cancel", str(path), "60"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0 and "survived" in child.stdout, (child.returncode, child.stderr[-2000:])


def test_a_stopped_daemon_leaves_no_ffmpeg_of_its_mp3_source(tmp_path: Path) -> None:
    path = _speech(tmp_path, "speech.mp3")
    model = random_model(tmp_path / "random.safetensors", ["alice", "bob"])
    extra = f'[embedded_broker]\nport = {free_port()}\nimplementation = "mosquitto"\n'
    config = write_config(tmp_path / "config.toml", model, file_source(path), 'broker = "embedded"', extra)
    daemon = DaemonProcess(config, tmp_path / "daemon.log")
    try:
        decoders: set[int] = set()
        deadline = time.monotonic() + 60
        while not decoders and time.monotonic() < deadline and daemon.process.poll() is None:
            decoders = {p for p in descendants(daemon.process.pid) if command(p).startswith("ffmpeg ")}
            time.sleep(0.05)
        assert decoders, daemon.text()[-3000:]
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, daemon.text()[-3000:]
        assert alive(decoders) == set()
    finally:
        daemon.kill()
