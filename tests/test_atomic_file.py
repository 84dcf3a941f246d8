"""A replaced file is the old one or the new one, and an interrupted write leaves no temporary behind."""

from pathlib import Path

import pytest

from spkidd.atomic_file import replaced_atomically


def test_a_finished_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    target.write_text("old")
    with replaced_atomically(target) as temporary:
        assert temporary.parent == tmp_path and temporary != target
        temporary.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError])
def test_an_interrupted_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, interruption: type[BaseException]
) -> None:
    target = tmp_path / "m.safetensors.ckpt"
    target.write_text("old")
    with pytest.raises(interruption), replaced_atomically(target) as temporary:
        temporary.write_text("half")
        raise interruption
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors.ckpt"]


def test_the_suffix_is_kept_for_writers_that_add_their_own(tmp_path: Path) -> None:
    target = tmp_path / "clip.npy"
    with replaced_atomically(target, suffix=".tmp.npy") as temporary:
        assert temporary.name.endswith(".tmp.npy")
        temporary.write_bytes(b"x")
    assert target.read_bytes() == b"x"
