"""The decoded-audio cache: rows cut from one long recording hash it once, and a recording changed on disk is
decoded again, never answered from the cache of its old content."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import spkidd.audio_cache as audio_cache
from spkidd.audio_cache import AudioCache, prepare, skipped_note
from spkidd.dataset import Row, discover


def tones(path: Path, frequency: float, seconds: float = 30.0) -> None:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(path, 0.3 * np.sin(2 * np.pi * frequency * t), 16000, subtype="PCM_16")


def dominant(audio: np.ndarray) -> float:
    return float(np.argmax(np.abs(np.fft.rfft(audio))) * 16000 / len(audio))


def test_rows_of_one_recording_hash_it_once_and_a_changed_recording_is_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[Path] = []
    real_hash = audio_cache._content_hash
    monkeypatch.setattr(audio_cache, "_content_hash", lambda path: hashed.append(path) or real_hash(path))
    recording = tmp_path / "long.wav"
    tones(recording, 440.0)
    rows = [Row(recording, "alice", float(start), float(start + 2)) for start in range(0, 28, 2)]
    cache = AudioCache(tmp_path / "cache")

    assert len(prepare(rows, cache).audio) == len(rows)
    assert set(hashed) == {recording} and len(hashed) <= 2  # two decoding threads may both meet it first
    hashed.clear()
    assert len(prepare(rows, cache).audio) == len(rows)
    assert hashed == []

    tones(recording, 880.0)
    stamp = recording.stat().st_mtime_ns + 1_000_000
    os.utime(recording, ns=(stamp, stamp))
    again = prepare(rows, cache)
    assert len(hashed) >= 1
    assert dominant(again.audio[0]) == pytest.approx(880.0, abs=5.0)


def test_a_row_decoded_now_is_what_the_next_run_reads_from_the_cache(tmp_path: Path) -> None:
    """A cold cache handed over the unrounded decode and a warm one its 16-bit samples: the same training on the same
    files gave the household benchmark 98.00% on its first run and 98.33% on its second."""
    recording = tmp_path / "voice.flac"
    t = np.arange(3 * 16000) / 16000
    sf.write(recording, 0.3 * np.sin(2 * np.pi * 220 * t) * np.hanning(len(t)), 16000, subtype="PCM_24")
    row = Row(recording, "alice")
    cold = AudioCache(tmp_path / "cache").load(row)
    warm = AudioCache(tmp_path / "cache").load(row)
    assert np.array_equal(cold, warm) and cold.dtype == warm.dtype == np.float32


def _skipped(data: Path, cache: Path) -> str:
    """The note `spkidd train` prints for what it could not use in `data` (its reasons as train/run.py builds them)."""
    rows = discover(data).rows
    prepared = prepare(rows, AudioCache(cache))
    return skipped_note([row.said(reason) for row, reason in prepared.skipped], rows)


def test_the_skipped_note_counts_a_manifest_s_rows_as_rows_and_a_folder_s_files_as_files(tmp_path: Path) -> None:
    """A manifest that cuts one unreadable recording into three pieces skipped three rows, not three files."""
    data = tmp_path / "data"
    (data / "alice").mkdir(parents=True)
    (data / "bob:2").mkdir()  # a colon and a number in a folder's name do not make its files manifest rows
    tones(data / "alice" / "good.wav", 440.0, seconds=3.0)
    (data / "alice" / "notes.wav").write_text("this is not audio")
    (data / "bob:2" / "empty.wav").write_bytes(b"")
    manifest = data / "manifest.csv"
    pieces = "".join(f"alice/notes.wav,alice,{start},{start + 2}\n" for start in (0, 2, 4))
    manifest.write_text(f"path,speaker,start,end\n{pieces}alice/good.wav,alice,0,2\nbob:2/empty.wav,bob\n")

    folder_note = _skipped(data, tmp_path / "cache")
    assert folder_note.splitlines()[0] == "skipped 2 unusable file(s):", folder_note
    rows_note = _skipped(manifest, tmp_path / "cache")
    assert rows_note.splitlines()[0] == "skipped 4 unusable manifest row(s):", rows_note
    assert [line.split(": ")[0] for line in rows_note.splitlines()[1:]] == [
        f"  {manifest}:{line}" for line in (2, 3, 4, 6)
    ], "each row is named by its manifest line"
