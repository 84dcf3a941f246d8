"""A truncated WAV/FLAC/OGG is reported as damaged, with where its audio stops: identify warns and answers from
what is there, enroll refuses it, and training skips it (tests/test_train_robustness.py). A range past the end of
an intact recording is refused as a wrong manifest row."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd.audio.decode import AudioDecodeError, DamagedAudioError, _read_frames, load_audio
from spkidd.synthetic import synth_audio
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import SPKIDD

FORMATS = [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS")]


def whole_and_truncated(directory: Path, extension: str, subtype: str, voice: str = "alice") -> tuple[Path, Path]:
    """A ~4-s clip in `extension`, and a copy cut to its first half (bytes), as an interrupted copy leaves it."""
    speech = np.concatenate([synth_audio(voice, text) for text in HELD_OUT_SENTENCES[:2]])
    whole = directory / f"{voice}.{extension}"
    sf.write(whole, speech, 16000, subtype=subtype)
    truncated = directory / f"{voice}_truncated.{extension}"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    return whole, truncated


@pytest.mark.parametrize(("extension", "subtype"), FORMATS)
def test_truncated_file_is_damaged_and_says_where_it_stops(tmp_path: Path, extension: str, subtype: str) -> None:
    whole, truncated = whole_and_truncated(tmp_path, extension, subtype)
    full = load_audio(whole)
    stops = r"damaged \(truncated or corrupt\): the audio stops at \d+\.\d\d s"
    with pytest.raises(DamagedAudioError, match=stops) as e:
        load_audio(truncated)
    assert str(truncated) in str(e.value)
    assert 0 < len(e.value.audio) < 0.8 * len(full)
    assert isinstance(e.value, AudioDecodeError)


def test_a_range_inside_the_intact_part_of_a_truncated_wav_loads(tmp_path: Path) -> None:
    _, truncated = whole_and_truncated(tmp_path, "wav", "PCM_16")
    assert len(load_audio(truncated, 0.5, 1.0)) == 8000


@pytest.mark.parametrize("extension", ["flac", "mp3"])
def test_a_range_past_the_end_is_refused_saying_where_the_recording_ends(tmp_path: Path, extension: str) -> None:
    """A manifest row 595-640 s of a 600-s recording was scored as its last 5 s without a word."""
    whole, _ = whole_and_truncated(tmp_path, "wav", "PCM_16")
    path = tmp_path / f"clip.{extension}"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(whole), str(path)], check=True)
    seconds = len(load_audio(path)) / 16000
    with pytest.raises(AudioDecodeError, match=rf"end {seconds + 5:.3f} s is past the end \({seconds:.2f}\d s\)"):
        load_audio(path, 1.0, seconds + 5)
    for end in (None, seconds + 3):
        with pytest.raises(AudioDecodeError, match=rf"start {seconds + 1:.3f} s is past the end"):
            load_audio(path, seconds + 1, end)
    assert len(load_audio(path, 1.0, seconds + 0.05)) == pytest.approx((seconds - 1.0) * 16000, abs=160)


def test_a_wav_written_to_a_pipe_is_not_damaged(tmp_path: Path) -> None:
    whole, _ = whole_and_truncated(tmp_path, "wav", "PCM_16")
    command = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(whole), "-f", "wav", "-"]
    streamed = subprocess.run(command, capture_output=True, check=True).stdout
    (tmp_path / "streamed.wav").write_bytes(streamed)
    assert len(load_audio(tmp_path / "streamed.wav")) == len(load_audio(whole))


def test_identify_warns_about_a_truncated_flac_and_answers_from_what_is_there(
    trained_model: Path, tmp_path: Path
) -> None:
    _, truncated = whole_and_truncated(tmp_path, "flac", "PCM_16")
    proc = subprocess.run(
        [SPKIDD, "identify", str(trained_model), str(truncated), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {truncated}: damaged (truncated or corrupt): the audio stops at" in proc.stderr
    result = json.loads(proc.stdout)
    assert "damaged" in result["warning"] and result["speaker"] == "alice"


def test_enroll_refuses_a_truncated_ogg(trained_model: Path, tmp_path: Path) -> None:
    _, truncated = whole_and_truncated(tmp_path, "ogg", "VORBIS", voice="erin")
    out = tmp_path / "m.safetensors"
    proc = subprocess.run(
        [SPKIDD, "enroll", str(trained_model), str(truncated), "-s", "erin", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"error: {truncated}: damaged (truncated or corrupt): the audio stops at" in proc.stderr
    assert not out.exists()


class _HeaderSaysLess:
    """A decoder whose header promises fewer frames than the stream holds (a stream's header written first)."""

    frames = 10

    def __init__(self, audio: np.ndarray) -> None:
        self.audio, self.at = audio, 0

    def tell(self) -> int:
        return 0

    def read(self, frames: int, dtype: str, always_2d: bool) -> np.ndarray:
        block = self.audio[self.at : self.at + frames]
        self.at += len(block)
        return np.stack([block, block], axis=1)


def test_frames_beyond_what_the_header_promised_are_read_too() -> None:
    audio = np.arange(100_000, dtype=np.float32)
    frames, cut = _read_frames(_HeaderSaysLess(audio), -1)  # type: ignore[arg-type]
    assert not cut and np.array_equal(frames, audio)
