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


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """25 s of 16-kHz WAV, of 44.1-kHz stereo FLAC (resampled), of MP3 and of M4A (ffmpeg's, with a pre-roll)."""
    folder = tmp_path_factory.mktemp("ranges")
    formats = [("a.wav", 16000, 1), ("b.flac", 44100, 2), ("c.mp3", 22050, 1), ("d.m4a", 16000, 1)]
    return {Path(name).suffix: _encoded(folder, name, rate, channels) for name, rate, channels in formats}


def _outcome_of_load(path: Path, start: float, end: float | None) -> tuple[np.ndarray | None, str]:
    """load_audio's samples of the range, or what it refused it with."""
    try:
        return load_audio(path, start, end), ""
    except AudioDecodeError as exc:
        return None, str(exc)


def _outcome_of_stream(path: Path, start: float, end: float | None) -> tuple[np.ndarray | None, str, list[int]]:
    """AudioStream's samples of the range, or what it refused it with (opening or finishing), and the blocks'
    lengths."""
    try:
        with AudioStream(path, start, end) as stream:
            blocks = list(stream)
            said = stream.finish()
    except AudioDecodeError as exc:
        return None, str(exc), []
    assert said == ""
    return np.concatenate(blocks), said, [len(block) for block in blocks]


@pytest.mark.parametrize("suffix", [".wav", ".flac", ".mp3", ".m4a"])
@pytest.mark.parametrize(
    ("start", "end"),
    [(0.0, 7.3), (3.0371, 17.4219), (0.6, None), (11.111, 24.95), (19.3, 25.08), (2.5, 2.5001)],
)
def test_a_range_streams_the_samples_load_audio_gives_for_it(
    recordings: dict[str, Path], monkeypatch: pytest.MonkeyPatch, suffix: str, start: float, end: float | None
) -> None:
    """Ranges at odd offsets, one to the end of the file, one running past it by less than load_audio lets pass,
    one shorter than a soundfile block: the same samples to the bit, block edges (1.37 s) anywhere."""
    monkeypatch.setattr(decode, "STREAM_BLOCK_S", 1.37)
    path = recordings[suffix]

    streamed, _, lengths = _outcome_of_stream(path, start, end)
    whole, told = _outcome_of_load(path, start, end)

    assert told == "" and whole is not None and streamed is not None
    assert np.array_equal(streamed, whole)
    assert len(whole) > 0
    assert max(lengths) < 1.5 * 1.37 * SAMPLE_RATE
    assert len(lengths) > 5 or (end or SECONDS) - start < 8


_PAST_THE_END = [(20.0, 26.0), (25.5, 30.0), (40.0, None), (25.03, None)]
"""Ranges of a 25-s recording that end past it, or start there (an MP3 or M4A decodes to 25.001 and 25.024 s)."""


@pytest.mark.parametrize(
    ("suffix", "start", "end"),
    [(suffix, *span) for suffix in (".wav", ".flac", ".mp3", ".m4a") for span in _PAST_THE_END]
    + [(".wav", 25.0, None), (".flac", 25.0, None)],
)
def test_a_range_past_the_end_is_refused_as_load_audio_refuses_it(
    recordings: dict[str, Path], suffix: str, start: float, end: float | None
) -> None:
    """Refused on opening where the header tells (a start past a WAV's or FLAC's end), else when the blocks end."""
    path = recordings[suffix]

    streamed, said, _ = _outcome_of_stream(path, start, end)
    whole, told = _outcome_of_load(path, start, end)

    assert whole is None and streamed is None
    assert said == told
    assert "is past the end" in said or said.endswith("no audio samples")


def test_a_range_of_a_damaged_file_streams_what_load_audio_keeps_and_says_the_same(tmp_path: Path) -> None:
    """A range that stops short of a truncated WAV's cut is intact; one that reaches past it is damaged."""
    path = _encoded(tmp_path, "a.wav", 44100)
    damaged = tmp_path / "damaged.wav"
    damaged.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    verdicts = []
    for start, end in ((1.5, 9.75), (3.3, 20.0), (2.0, None)):
        with AudioStream(damaged, start, end) as stream:
            streamed = np.concatenate(list(stream))
            said = stream.finish()
        whole, told = _whole_range(damaged, start, end)
        assert said == told
        assert np.array_equal(streamed, whole)
        verdicts.append(said.removeprefix(f"{damaged}: "))
    assert verdicts == ["", *(f"damaged (truncated or corrupt): the audio stops at {s} s" for s in ("9.20", "10.50"))]


def test_a_range_of_a_file_with_nan_is_refused_as_load_audio_refuses_it(tmp_path: Path) -> None:
    """A float WAV with NaN samples: the stream hands out none from the block that holds them on, yet measures the
    range on all of it, as load_audio does."""
    audio = _noise(SAMPLE_RATE)[:, 0]
    audio[5 * SAMPLE_RATE] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, audio, SAMPLE_RATE, subtype="FLOAT")

    said = []
    for start, end in ((1.0, 20.0), (1.0, 40.0)):
        _, told = _outcome_of_load(path, start, end)
        streamed, message, _ = _outcome_of_stream(path, start, end)
        assert streamed is None and message == told
        said.append(message)
    assert said[0].endswith("audio holds NaN or infinite samples")
    assert said[1].endswith("end 40.000 s is past the end (25.000 s)")


def _whole_range(path: Path, start: float, end: float | None) -> tuple[np.ndarray, str]:
    try:
        return load_audio(path, start, end), ""
    except DamagedAudioError as exc:
        return exc.audio, str(exc)
