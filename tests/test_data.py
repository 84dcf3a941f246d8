from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from spkidd.dataset import DataError, discover, read_manifest


def _wav(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * 200 * t), rate)
    return path


def test_manifest_with_relative_paths_and_times(tmp_path: Path) -> None:
    _wav(tmp_path / "audio" / "a.wav", 3.0)
    (tmp_path / "m.csv").write_text("path,speaker,start,end\naudio/a.wav,alice,0.5,2.0\naudio/a.wav,alice,,\n")
    rows = read_manifest(tmp_path / "m.csv")
    assert [(r.speaker, r.start, r.end) for r in rows] == [("alice", 0.5, 2.0), ("alice", 0.0, None)]
    assert rows[0].path == tmp_path / "audio" / "a.wav"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("path,speaker,gender\nx.wav,a,f\n", r"m.csv:1: unknown column\(s\) gender"),
        ("path,speaker\nmissing.wav,a\n", r"m.csv:2: no such file"),
        ("path,speaker,start,end\nok.wav,a,2,1\n", r"m.csv:2: end 1.0 is not after start 2.0"),
        ("path,speaker,start\nok.wav,a,-1\n", r"m.csv:2: start -1.0 is negative"),
        ("path,speaker,start\nok.wav,a,soon\n", r"m.csv:2: start 'soon' is not a number"),
        ("path,speaker\nok.wav,a\n,b\n", r"m.csv:3: empty path or speaker"),
        ("path\nok.wav\n", r"m.csv:1: a manifest needs the columns path and speaker"),
        ("path,speaker\nok.wav,1688,notanumber,3.0\n", r"m.csv:2: 4 fields, but the header has 2 \(path,speaker\)"),
    ],
)
def test_bad_manifests_are_refused_with_line_number(tmp_path: Path, content: str, message: str) -> None:
    _wav(tmp_path / "ok.wav")
    (tmp_path / "m.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path / "m.csv")


def test_speaker_folders_like_voxceleb_and_librispeech(tmp_path: Path) -> None:
    _wav(tmp_path / "id10001" / "vid1" / "00001.wav")
    _wav(tmp_path / "id10001" / "vid2" / "00001.wav")
    _wav(tmp_path / "103" / "1240" / "103-1240-0000.flac")
    (tmp_path / "103" / "1240" / "103-1240.trans.txt").write_text("text")
    found = discover(tmp_path)
    assert sorted((r.speaker, r.path.name) for r in found.rows) == [
        ("103", "103-1240-0000.flac"),
        ("id10001", "00001.wav"),
        ("id10001", "00001.wav"),
    ]
    assert found.left_out == []


def test_hidden_files_and_folders_are_neither_speakers_nor_recordings(tmp_path: Path) -> None:
    """A `.git` folder beside the speaker folders became a speaker of the model, and macOS's `._clip.wav` resource
    forks (named like audio) and `.DS_Store` were decoded and reported as unusable files."""
    _wav(tmp_path / "alice" / "clip.wav")
    _wav(tmp_path / "bob" / "holiday" / "clip.wav")
    _wav(tmp_path / ".git" / "x.wav")
    _wav(tmp_path / "bob" / ".Trash" / "old.wav")
    (tmp_path / "alice" / "._clip.wav").write_bytes(b"\x00\x05\x16\x07")
    (tmp_path / "alice" / ".DS_Store").write_bytes(b"\x00")
    found = discover(tmp_path)
    assert sorted((r.speaker, str(r.path.relative_to(tmp_path))) for r in found.rows) == [
        ("alice", "alice/clip.wav"),
        ("bob", "bob/holiday/clip.wav"),
    ]
    assert found.left_out == []


def test_a_flat_folder_with_a_hidden_folder_is_still_flat(tmp_path: Path) -> None:
    _wav(tmp_path / "0_george_1.wav")
    _wav(tmp_path / ".thumbnails" / "x.wav")
    with pytest.raises(DataError, match="a flat folder of audio needs --label-pattern"):
        discover(tmp_path)
    assert [r.path.name for r in discover(tmp_path, "_(?P<speaker>[a-z]+)_").rows] == ["0_george_1.wav"]


def test_what_speaker_folders_leave_out_is_said(tmp_path: Path) -> None:
    """An empty speaker folder (its recordings not copied yet) and recordings beside the speaker folders were left
    out without a word: the model then simply did not know that person."""
    _wav(tmp_path / "alice" / "clip.wav")
    _wav(tmp_path / "bob" / "clip.wav")
    (tmp_path / "carol" / "notes").mkdir(parents=True)
    _wav(tmp_path / "stray.wav")
    found = discover(tmp_path)
    assert sorted(r.speaker for r in found.rows) == ["alice", "bob"]
    assert found.left_out == [
        "1 speaker folder(s) without audio files: carol",
        f"1 audio file(s) in {tmp_path} itself, outside the speaker folders (e.g. stray.wav): a speaker's "
        "recordings go in a folder named after the speaker",
    ]


def test_flat_folder_with_label_pattern(tmp_path: Path) -> None:
    for name in ("3_george_7.wav", "0_theo_12.wav", "speaker001_clip1.wav"):
        _wav(tmp_path / name)
    found = discover(tmp_path, r"^\d+_(?P<speaker>[a-z]+)_\d+")
    assert sorted(r.speaker for r in found.rows) == ["george", "theo"]
    assert found.left_out == [  # the pattern as typed, not with its backslashes doubled by repr()
        r"1 audio file(s) whose names do not match --label-pattern '^\d+_(?P<speaker>[a-z]+)_\d+' "
        "(e.g. speaker001_clip1.wav)"
    ]
    seed_style = discover(tmp_path, r"^(?P<speaker>speaker\d+)_clip")
    assert [r.speaker for r in seed_style.rows] == ["speaker001"]


def test_flat_folder_without_pattern_explains_what_to_do(tmp_path: Path) -> None:
    _wav(tmp_path / "a.wav")
    with pytest.raises(DataError, match="--label-pattern"):
        discover(tmp_path)
    with pytest.raises(DataError, match="named group"):
        discover(tmp_path, r"(\w+)")
