import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from spkidd.features import FeatureParams
from spkidd.model import ModelConfig, SpeakerModel
from spkidd.modelfile import FORMAT_VERSION, ModelBundle, ModelFileError, load_model, save_model


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


def test_newer_format_is_refused_with_upgrade_hint(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_bundle(), path)
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    meta = json.loads(header["__metadata__"]["spkidd"])
    meta["format_version"] = FORMAT_VERSION + 1
    header["__metadata__"]["spkidd"] = json.dumps(meta)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + raw[8 + length :])
    with pytest.raises(ModelFileError, match="newer"):
        load_model(path)


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
