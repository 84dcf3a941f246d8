"""Keeping the audio of `unknown` utterances: the bounded folder, and a new household member enrolled from it."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd.audio.replay import ReplaySource
from spkidd.events import Identification
from spkidd.modelfile import load_model
from spkidd.pipeline import PipelineEvent, PipelineSettings, StreamPipeline
from spkidd.synthetic import synth_speech
from spkidd.unknown_clips import UnknownClipSettings, kept_clips, save_unknown_clip, trim_folder
from tests.conftest import HELD_OUT_SENTENCES, TRAIN_SENTENCES
from tests.support.daemon import SPKIDD
from tests.support.streaming import silence, write_wav


def _unknown(utterance_id: str, speech_s: float = 2.0) -> Identification:
    return Identification(
        source="room",
        utterance_id=utterance_id,
        event_type="unknown",
        speaker="unknown",
        confidence=0.4,
        top_k={"alice": 0.4, "bob": 0.3},
        final=True,
        start=1.0,
        end=1.0 + speech_s,
        speech_s=speech_s,
    )


def _pcm(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * 16000)) * 3000).astype(np.int16)


def test_a_clip_is_a_wav_with_its_decision_beside_it(tmp_path: Path) -> None:
    settings = UnknownClipSettings(folder=tmp_path / "unknown")
    audio = _pcm(2.0)
    path = save_unknown_clip(settings, audio, _unknown("room-000007"))
    assert path is not None and path.parent == settings.folder and path.name.endswith("_room-000007.wav")
    samples, rate = sf.read(path, dtype="int16")
    assert rate == 16000 and np.array_equal(samples, audio)
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["speaker"] == "unknown" and sidecar["top_k"] == {"alice": 0.4, "bob": 0.3}
    assert sidecar["audio_s"] == 2.0
    assert not [p for p in settings.folder.iterdir() if p.name.startswith(".")], "no partial file is left behind"


def test_short_utterances_are_not_kept(tmp_path: Path) -> None:
    settings = UnknownClipSettings(folder=tmp_path, min_speech_s=1.0)
    assert save_unknown_clip(settings, _pcm(0.5), _unknown("room-000001", speech_s=0.5)) is None
    assert list(tmp_path.iterdir()) == []


def test_the_folder_keeps_the_newest_clips_within_count_and_size_and_spares_other_files(tmp_path: Path) -> None:
    mine = tmp_path / "notes.wav"
    mine.write_bytes(b"not ours")
    by_count = UnknownClipSettings(folder=tmp_path, max_clips=3)
    for i in range(5):
        save_unknown_clip(by_count, _pcm(1.5, i), _unknown(f"room-{i:06d}"))
    assert [p.name[-15:] for p in kept_clips(tmp_path)] == ["room-000002.wav", "room-000003.wav", "room-000004.wav"]
    assert len(list(tmp_path.glob("*.json"))) == 3, "sidecars go with their clips"
    assert mine.read_bytes() == b"not ours", "files spkidd did not write are never deleted"

    by_size = UnknownClipSettings(folder=tmp_path, max_clips=100, max_mb=0.2)  # a 2-s clip is 64 kB
    for i in range(5, 9):
        save_unknown_clip(by_size, _pcm(2.0, i), _unknown(f"room-{i:06d}"))
    kept = kept_clips(tmp_path)
    assert sum(p.stat().st_size + p.with_suffix(".json").stat().st_size for p in kept) <= 0.2e6
    assert kept[-1].name.endswith("room-000008.wav") and len(kept) == 3


def test_a_full_folder_is_listed_once_per_clip_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest clip (for min_interval_s and the new name) and the trim come from one listing: a folder of
    hundreds of clips was read twice for every utterance answered `unknown`."""
    settings = UnknownClipSettings(folder=tmp_path, max_clips=3, min_interval_s=0.0)
    for i in range(3):
        save_unknown_clip(settings, _pcm(1.5, i), _unknown(f"room-{i:06d}"))
    listed: list[Path] = []
    real_iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda path: listed.append(path) or real_iterdir(path))
    assert save_unknown_clip(settings, _pcm(1.5, 3), _unknown("room-000003")) is not None
    assert listed == [tmp_path]
    assert [p.name[-15:] for p in kept_clips(tmp_path)] == ["room-000001.wav", "room-000002.wav", "room-000003.wav"]


def test_a_clip_deleted_since_the_listing_is_not_counted_by_the_trim(tmp_path: Path) -> None:
    """The page's enrollment removes the clips it learned from, maybe between a save's listing and its trim."""
    for i in range(3):
        save_unknown_clip(UnknownClipSettings(folder=tmp_path), _pcm(1.5, i), _unknown(f"room-{i:06d}"))
    listed = kept_clips(tmp_path)
    listed[1].unlink()
    listed[1].with_suffix(".json").unlink()
    assert trim_folder(UnknownClipSettings(folder=tmp_path, max_clips=2), listed) == []
    assert kept_clips(tmp_path) == [listed[0], listed[2]]


def test_an_unwritable_folder_is_refused_with_the_os_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError):
        save_unknown_clip(UnknownClipSettings(folder=blocker / "unknown"), _pcm(2.0), _unknown("room-000001"))


def test_bounds_must_make_sense() -> None:
    with pytest.raises(ValueError, match="max_clips"):
        UnknownClipSettings(max_clips=0)
    with pytest.raises(ValueError, match="max_mb"):
        UnknownClipSettings(max_mb=0)


@pytest.mark.slow
async def test_a_new_member_heard_as_unknown_is_enrolled_from_the_kept_clips(
    household_model: Path, tmp_path: Path
) -> None:
    """The optional part of the open-set issue as a user meets it: erin is not in the household model; the daemon's
    pipeline answers his turns `unknown` and keeps them; enrolling from those clips makes her known."""
    turns = (
        [("alice", TRAIN_SENTENCES[0])] + [("erin", s) for s in TRAIN_SENTENCES[1:9]] + [("bob", TRAIN_SENTENCES[6])]
    )
    parts = [silence(0.5)]
    for i, (voice, sentence) in enumerate(turns):
        audio, _ = sf.read(str(synth_speech(voice, sentence, tmp_path / f"turn{i}.wav")), dtype="float32")
        parts += [audio, silence(1.0)]
    room = write_wav(tmp_path / "room.wav", np.concatenate(parts))
    folder = tmp_path / "unknown"
    settings = PipelineSettings(unknown_clips=UnknownClipSettings(folder=folder))
    pipeline = StreamPipeline(ReplaySource("room", room, realtime=False), load_model(household_model), settings)
    events: list[PipelineEvent] = []
    await asyncio.wait_for(pipeline.run(events.append), timeout=300)

    finals = [e for e in events if isinstance(e, Identification) and e.final]
    assert finals[0].speaker == "alice" and finals[-1].speaker == "bob"
    unknown_ids = [f.utterance_id for f in finals if f.speaker == "unknown"]
    clips = kept_clips(folder)
    assert [c.name.split("_", 1)[1][:-4] for c in clips] == unknown_ids, "exactly the unknown utterances are kept"
    assert len(clips) >= 6, f"erin's turns should mostly be unknown to the household model: {finals}"

    enrolled = tmp_path / "with_erin.safetensors"
    proc = subprocess.run(
        [SPKIDD, "enroll", str(household_model), "--speaker", "erin", "--out", str(enrolled), *map(str, clips)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    held_out = [synth_speech("erin", s, tmp_path / f"erin_test{i}.wav") for i, s in enumerate(HELD_OUT_SENTENCES[:2])]
    proc = subprocess.run(
        [SPKIDD, "identify", str(enrolled), *map(str, held_out), "--json"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["speaker"] for line in proc.stdout.splitlines()] == ["erin", "erin"]


def test_clips_are_private_whatever_the_umask(tmp_path: Path) -> None:
    """Issue 11 item 15: outside systemd clips were written 0644 in a 0755 folder."""
    folder = tmp_path / "voices" / "unknown"
    settings = UnknownClipSettings(folder=folder)
    old = os.umask(0o022)
    try:
        path = save_unknown_clip(settings, _pcm(2.0), _unknown("room-000001"))
    finally:
        os.umask(old)
    assert path is not None
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in (path, path.with_suffix(".json"))} == {0o600}


def test_a_clip_larger_than_the_folder_bound_is_not_reported_as_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = UnknownClipSettings(folder=tmp_path, max_mb=0.01)
    assert save_unknown_clip(settings, _pcm(2.0), _unknown("room-000001")) is None
    assert kept_clips(tmp_path) == [] and "larger than max_mb" in caplog.text
