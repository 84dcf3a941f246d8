"""A file decoded a block at a time (AudioStream, what identify reads a long recording with) gives load_audio's
samples exactly, resampled or not, through soundfile or ffmpeg, and says damage and errors as load_audio does."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd import SAMPLE_RATE
from spkidd.audio import decode
from spkidd.audio.decode import AudioDecodeError, AudioStream, DamagedAudioError, load_audio
from spkidd.inference import consecutive_pieces, pieces_of_blocks

SECONDS = 25.0


def _noise(rate: int, channels: int = 1) -> np.ndarray:
    """Noise shaped into syllables, so that an encoder has something to encode."""
    rng = np.random.default_rng(rate)
    t = np.arange(int(SECONDS * rate)) / rate
    envelope = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    return (0.3 * rng.standard_normal((len(t), channels)) * envelope[:, None]).astype(np.float32)


def _encoded(folder: Path, name: str, rate: int, channels: int = 1) -> Path:
    """A recording as `name` says (its extension the format); through a WAV and ffmpeg for what soundfile cannot
    write."""
    wav = folder / f"{Path(name).stem}.source.wav"
    sf.write(wav, _noise(rate, channels), rate, subtype="FLOAT")
    path = folder / name
    if path.suffix in (".flac", ".wav", ".ogg"):
        sf.write(path, sf.read(wav, dtype="float32")[0], rate)
    else:
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(wav), str(path)], check=True)
    return path


def _streamed(path: Path) -> tuple[np.ndarray, str, list[int]]:
    """The stream's samples, what finish() said, and the blocks' lengths."""
    with AudioStream(path) as stream:
        blocks = list(stream)
        said = stream.finish()
    return np.concatenate(blocks), said, [len(block) for block in blocks]


def _whole(path: Path) -> tuple[np.ndarray, str]:
    try:
        return load_audio(path), ""
    except DamagedAudioError as exc:
        return exc.audio, str(exc)


@pytest.mark.parametrize(
    ("name", "rate", "channels"),
    [("a.flac", 16000, 1), ("b.wav", 44100, 2), ("c.ogg", 48000, 1), ("d.mp3", 22050, 1), ("e.m4a", 16000, 1)],
)
def test_a_stream_gives_the_samples_of_the_whole_file_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, rate: int, channels: int
) -> None:
    """Block edges at odd places (1.37 s) change nothing: soxr's streaming resampler carries its state across them
    and gives the one-shot resampler's samples, and ffmpeg's pipe is the same bytes read in pieces."""
    monkeypatch.setattr(decode, "STREAM_BLOCK_S", 1.37)
    path = _encoded(tmp_path, name, rate, channels)

    streamed, said, lengths = _streamed(path)

    assert said == ""
    assert np.array_equal(streamed, load_audio(path))
    assert len(lengths) > 10 and max(lengths) < 1.5 * 1.37 * SAMPLE_RATE


@pytest.mark.parametrize("name", ["a.flac", "b.wav", "c.ogg", "d.mp3"])
def test_a_damaged_file_streams_what_load_audio_keeps_and_says_the_same(tmp_path: Path, name: str) -> None:
    path = _encoded(tmp_path, name, 44100 if name != "d.mp3" else 16000)
    damaged = tmp_path / f"damaged{path.suffix}"
    data = bytearray(path.read_bytes())
    if path.suffix == ".mp3":
        for i in range(len(data) // 2, len(data), 97):
            data[i] = 0xFF
    else:
        del data[len(data) // 2 :]
    damaged.write_bytes(bytes(data))

    whole, told = _whole(damaged)
    streamed, said, _ = _streamed(damaged)

    assert "damaged (truncated or corrupt): the audio stops at" in told
    assert said == told
    assert np.array_equal(streamed, whole)


def test_a_file_nothing_decodes_is_refused_as_load_audio_refuses_it(tmp_path: Path) -> None:
    path = tmp_path / "notes.mp3"
    path.write_text("not audio at all\n" * 100)
    with pytest.raises(AudioDecodeError) as whole:
        load_audio(path)

    with AudioStream(path) as stream, pytest.raises(AudioDecodeError) as streamed:
        assert list(stream) == []
        stream.finish()

    assert str(streamed.value) == str(whole.value)
    assert "ffmpeg could not decode it" in str(streamed.value)


def test_a_stream_stopped_early_leaves_no_ffmpeg_behind(tmp_path: Path) -> None:
    path = _encoded(tmp_path, "long.mp3", 16000)
    with AudioStream(path) as stream:
        next(iter(stream))
        process = stream._decoder._proc  # type: ignore[union-attr]
    assert process.returncode is not None


def test_pieces_of_blocks_are_the_pieces_of_the_whole() -> None:
    audio = np.arange(10_000, dtype=np.float32)
    blocks = np.split(audio, [7, 1500, 1501, 4000, 9999])

    for size, least in ((1000, 500), (3000, 1000), (3000, 1), (20_000, 1)):
        pieces = list(pieces_of_blocks(blocks, size, least))
        expected = consecutive_pieces(audio, size, least)
        assert [start for start, _ in pieces] == [start for start, _ in expected]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(pieces, expected, strict=True))


async def test_a_replay_of_blocks_gives_the_chunks_of_a_replay_of_the_whole() -> None:
    """identify's timeline heard the whole recording as int16 (from_samples); it now hears it as decoded."""
    from spkidd.audio.replay import ReplaySource, to_chunkable_pcm

    audio = _noise(SAMPLE_RATE)[:, 0]
    blocks = np.split(audio, [1, 7000, 7001, 123_456])

    whole = [chunk async for chunk in ReplaySource.from_samples("a", to_chunkable_pcm(audio), realtime=False).chunks()]
    streamed = [chunk async for chunk in ReplaySource.from_blocks("b", iter(blocks)).chunks()]

    assert [c.start_s for c in streamed] == [c.start_s for c in whole]
    assert np.array_equal(np.concatenate([c.samples for c in streamed]), np.concatenate([c.samples for c in whole]))
