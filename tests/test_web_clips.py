"""The unknown-clips shelf behind the page (a unit test of spkidd.web.clips): only the keeper's own clip names
inside its folder are ever opened, clips are grouped by how alike their voice prints are, and a clip's closest
speakers are those of the model as it is now."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd.enrollment import enroll_audio, forget, rename
from spkidd.modelfile import load_model
from spkidd.synthetic import SENTENCES, synth_audio
from spkidd.web.clips import ClipError, ClipShelf, group_by_voice
from tests.support.daemon import random_model


class _Control:
    def __init__(self, folder: Path | None) -> None:
        self.clips_folder = folder


def _unit(*values: float) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def test_only_kept_clip_names_inside_the_folder_are_opened(tmp_path: Path) -> None:
    folder = tmp_path / "unknown"
    folder.mkdir()
    kept = folder / "20261126T101010.123Z_kitchen-000001.wav"
    kept.write_bytes(b"RIFF")
    (tmp_path / "voices.safetensors").write_bytes(b"model")
    shelf = ClipShelf(_Control(folder))
    assert shelf.path(kept.name) == kept
    for name in ("../voices.safetensors", "..", "/etc/passwd", "20261126T101010.123Z_../../x.wav", "a.wav"):
        with pytest.raises(ClipError, match="not the name of a kept clip"):
            shelf.path(name)
    with pytest.raises(ClipError, match="no kept clip") as missing:
        shelf.path("20261126T101010.124Z_kitchen-000002.wav")
    assert missing.value.status == 404
    with pytest.raises(ClipError, match="select at least one clip"):
        shelf.audio([])
    with pytest.raises(ClipError, match="keeping unknown voices is off"):
        ClipShelf(_Control(None)).path(kept.name)


def test_alike_voice_prints_share_a_group_and_clips_without_speech_stand_alone() -> None:
    prints = {
        "a1": _unit(1, 0, 0),
        "b1": _unit(0, 1, 0),
        "a2": _unit(0.95, 0.1, 0),
        "silent": None,
        "b2": _unit(0.1, 0.97, 0.05),
    }
    names = ["a1", "b1", "a2", "silent", "b2"]
    assert group_by_voice(prints, names) == [["a1", "a2"], ["b1", "b2"], ["silent"]]


def test_clips_of_one_real_voice_are_as_alike_as_a_cosine_of_one_half() -> None:
    """Two 2-s clips of one real voice give voice prints with a cosine around 0.5 (0.54 median on E1's voices)."""
    prints = {"a1": _unit(1, 0, 0), "a2": _unit(0.6, 0.8, 0), "b1": _unit(0.4, 0, 0.92)}
    assert group_by_voice(prints, ["a1", "a2", "b1"]) == [["a1", "a2"], ["b1"]]


def test_a_clip_s_closest_speakers_are_those_of_the_model_as_it_is_now(tmp_path: Path) -> None:
    """A user renamed Mum to Mom and forgot Nina2, and the page still listed `closest: Nina2 50 %, Mum 0 %` (the
    daemon's answer when it kept the clip): the closest speakers now come from the current model."""
    folder = tmp_path / "unknown"
    folder.mkdir()
    clip = folder / "20261126T101010.123Z_kitchen-000001.wav"
    speech = synth_audio("erin", SENTENCES[0])
    sf.write(clip, speech, 16000)
    clip.with_suffix(".json").write_text(json.dumps({"top_k": {"Nina2": 0.5, "Mum": 0.0}, "speech_s": 2.0}))
    bundle = load_model(random_model(tmp_path / "m.safetensors", ["Mum", "bob"]))
    bundle, _ = enroll_audio(bundle, "Nina2", {"erin": speech}, force=True)
    shelf = ClipShelf(_Control(folder))
    assert "Nina2" in shelf.listing(bundle)[0]["clips"][0]["candidates"]

    changed = rename(forget(bundle, "Nina2"), "Mum", "Mom")
    (listed,) = shelf.listing(changed)[0]["clips"]
    assert set(listed["candidates"]) == {"Mom", "bob"} and listed["speech_s"] == 2.0
    assert abs(sum(listed["candidates"].values()) - 1.0) < 1e-4
