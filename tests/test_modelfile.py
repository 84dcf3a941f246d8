import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from spkidd.features import FeatureParams
from spkidd.model import ModelConfig, SpeakerModel
from spkidd.modelfile import FORMAT_VERSION, ModelBundle, ModelFileError, load_model, save_model
from tests.support.streaming import random_bundle


def _bundle() -> ModelBundle:
    torch.manual_seed(1)
    model = SpeakerModel(ModelConfig(n_features=40, n_speakers=2, hidden=32, embedding_dim=16)).eval()
    model.set_normalization(torch.randn(40), torch.rand(40) + 0.5)
    return ModelBundle(
        model=model,
        labels=["alice", "bob"],
        features=FeatureParams(),
        decision={"min_score": 0.4},
        training={"created": "2026-11-25T00:00:00+00:00"},
        enrollment={"bob": {"seconds": 12.5}},
    )


def test_round_trip_keeps_weights_labels_features_and_metadata(tmp_path: Path) -> None:
    bundle = _bundle()
    path = tmp_path / "m.safetensors"
    save_model(bundle, path)
    loaded = load_model(path)
    assert loaded.labels == ["alice", "bob"]
    assert loaded.features == bundle.features
    assert loaded.decision == {"min_score": 0.4}
    assert loaded.enrollment == {"bob": {"seconds": 12.5}}
    assert loaded.model.config == bundle.model.config
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key])
    assert not list(tmp_path.glob("*.tmp")), "the temporary file is renamed away"


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_bundle(), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="corrupt or truncated"):
        load_model(path)


def test_garbage_and_empty_files_are_refused(tmp_path: Path) -> None:
    for content in (b"", b"not a model at all" * 10):
        path = tmp_path / "bad.safetensors"
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match=str(path)):
            load_model(path)


def test_foreign_safetensors_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="not a spkidd model"):
        load_model(path)


def _header(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header: dict[str, Any] = json.loads(raw[8 : 8 + length])
    return header


def _rewrite_metadata(path: Path, spkidd_json: str) -> None:
    """The same tensors under other spkidd metadata, as a hand-edited or crafted file would have."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    header["__metadata__"]["spkidd"] = spkidd_json
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])


def test_newer_format_is_refused_with_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_bundle(), path)
    meta = json.loads(_header(path)["__metadata__"]["spkidd"])
    meta["format_version"] = FORMAT_VERSION + 1
    _rewrite_metadata(path, json.dumps(meta))
    with pytest.raises(ModelFileError, match="newer"):
        load_model(path)


@pytest.mark.parametrize("encoder", [False, True])
def test_format_1_encoder_models_are_refused_with_a_word_to_retrain(tmp_path: Path, encoder: bool) -> None:
    """Format-1 encoder models held the unknown threshold to the head's cosines; scratch models did not change."""
    path = tmp_path / "m.safetensors"
    save_model(random_bundle(["alice", "bob"], encoder=encoder), path)
    meta = json.loads(_header(path)["__metadata__"]["spkidd"])
    meta["format_version"] = 1
    _rewrite_metadata(path, json.dumps(meta))
    if encoder:
        with pytest.raises(ModelFileError, match="train it again with `spkidd train`"):
            load_model(path)
    else:
        assert load_model(path).labels == ["alice", "bob"]


def test_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model(tmp_path / "nope.safetensors")


def test_failed_write_leaves_previous_model_intact(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_bundle(), path)
    before = path.read_bytes()
    broken = _bundle()
    broken.labels = ["only-one"]
    with pytest.raises(ValueError):
        save_model(broken, path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp"))


def test_a_file_declaring_a_huge_network_is_refused_before_building_it(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_bundle(), path)
    header = _header(path)
    meta = json.loads(header["__metadata__"]["spkidd"])
    meta["architecture"]["hidden"] = 2000
    _rewrite_metadata(path, json.dumps(meta))
    probe = (  # VmHWM is this process's own peak (ru_maxrss would include the forking pytest's)
        "from spkidd.modelfile import ModelFileError, load_model\n"
        f"try:\n    load_model({str(path)!r})\nexcept ModelFileError as exc:\n    print(exc)\n"
        "hwm = [line for line in open('/proc/self/status') if line.startswith('VmHWM')][0]\n"
        "print(int(hwm.split()[1]) // 1024)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    message, peak_mb = done.stdout.strip().splitlines()
    assert "does not match the stored tensors" in message
    assert int(peak_mb) < 450, "nothing of the declared size was allocated"


@pytest.mark.parametrize("encoder", [False, True])
def test_loading_a_model_imports_no_compiler(tmp_path: Path, encoder: bool) -> None:
    """The shape check on the meta device once pulled in torch._dynamo (and sympy): seconds and tens of MB for
    every command and daemon that loads a model."""
    path = tmp_path / "m.safetensors"
    save_model(random_bundle(["alice", "bob"], encoder=encoder), path)
    probe = (
        "import sys\nfrom spkidd.modelfile import load_model\n"
        f"load_model({str(path)!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('torch._dynamo', 'sympy'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("key, value", [("decision", "strict"), ("decision", [1, 2]), ("training", 3)])
def test_metadata_of_the_wrong_shape_is_refused_in_one_line(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_bundle(), path)
    meta = json.loads(_header(path)["__metadata__"]["spkidd"])
    meta[key] = value
    _rewrite_metadata(path, json.dumps(meta))
    with pytest.raises(ModelFileError, match="inconsistent model file"):
        load_model(path)


def test_rewriting_a_model_keeps_its_owner_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_bundle(), path)
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, 65534, 65534)
    save_model(_bundle(), path)
    stat = path.stat()
    assert stat.st_mode & 0o777 == 0o640
    if os.geteuid() == 0:
        assert (stat.st_uid, stat.st_gid) == (65534, 65534)


def test_a_new_model_file_is_readable_by_others_as_umask_allows(tmp_path: Path) -> None:
    path = tmp_path / "new.safetensors"
    old = os.umask(0o022)
    try:
        save_model(_bundle(), path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_every_change_of_speakers_is_a_new_visible_version(tmp_path: Path) -> None:
    from spkidd.enrollment import forget, rename

    bundle = _bundle()
    path = tmp_path / "m.safetensors"
    renamed = rename(bundle, "bob", "robert")
    save_model(renamed, path)
    loaded = load_model(path)
    assert loaded.version == "2026-11-25T00:00:00+00:00+r1" and loaded.labels == ["alice", "robert"]
    assert forget(loaded, "alice").version.endswith("+r2")


@pytest.mark.parametrize("name", ["unknown", "none", "Unknown ", ""])
def test_reserved_or_empty_names_are_refused(name: str) -> None:
    from spkidd.enrollment import rename

    with pytest.raises(ValueError, match=r"reserved|needs a name"):
        rename(_bundle(), "bob", name)
