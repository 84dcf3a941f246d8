"""Low-rate MP3s (voice memos, speech datasets) decode cleanly and quietly, whole and as a replayed source."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from spkidd import SAMPLE_RATE
from spkidd.audio.decode import DamagedAudioError, load_audio
from spkidd.audio.replay import ReplaySource

SECONDS = 20.0


@pytest.fixture(scope="module", params=[8000, 16000, 22050])
def voice_memo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Noise shaped into syllables, encoded as a mono MP3 at a speech rate (MPEG-2 and 2.5 layer III)."""
    rate = int(request.param)
    rng = np.random.default_rng(0)
    t = np.arange(int(SECONDS * rate)) / rate
    audio = 0.3 * rng.standard_normal(len(t)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
    raw = tmp_path_factory.mktemp("mp3") / f"memo{rate}.f32"
    audio.astype("<f4").tofile(raw)
    path = raw.with_suffix(".mp3")
    subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-f", "f32le", "-ar", str(rate), "-ac", "1", "-i", str(raw), str(path)],
        check=True,
    )
    return path


def test_a_low_rate_mp3_decodes_without_decoder_errors(voice_memo: Path, capfd: pytest.CaptureFixture[str]) -> None:
    audio = load_audio(voice_memo)
    assert "libmpg123" not in capfd.readouterr().err
    assert abs(len(audio) - SECONDS * SAMPLE_RATE) < 0.1 * SAMPLE_RATE


def test_a_range_of_a_low_rate_mp3_is_the_same_part_of_the_whole(
    voice_memo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    whole = load_audio(voice_memo)
    part = load_audio(voice_memo, 5.0, 12.0)
    assert "libmpg123" not in capfd.readouterr().err
    assert len(part) == 7 * SAMPLE_RATE
    assert np.abs(part - whole[5 * SAMPLE_RATE : 12 * SAMPLE_RATE]).max() < 1e-4


async def test_a_replayed_low_rate_mp3_gives_the_samples_load_audio_gives(
    voice_memo: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    chunks = [chunk.samples async for chunk in ReplaySource("memo", voice_memo, realtime=False).chunks()]
    streamed = np.concatenate(chunks).astype(np.float32) / 32768.0
    whole = load_audio(voice_memo)
    assert "libmpg123" not in capfd.readouterr().err
    assert np.abs(streamed[: len(whole)] - whole).max() < 2e-3


def test_a_corrupt_mp3_is_damaged_and_says_where_it_stops(
    voice_memo: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(voice_memo.read_bytes())
    for i in range(len(data) // 2, len(data), 97):
        data[i] = 0xFF
    corrupt = tmp_path / "corrupt.mp3"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DamagedAudioError, match=r"damaged .* stops at") as damaged:
        load_audio(corrupt)
    assert "libmpg123" not in capfd.readouterr().err
    assert len(damaged.value.audio) > 0.4 * SECONDS * SAMPLE_RATE
