"""The model file: safetensors weights with spkidd's JSON metadata in the safetensors header.

One file holds everything the daemon needs to reproduce training's features and labels. Loading reads tensors
and JSON only (never pickle), and refuses corrupt, foreign or newer files with a message that says which.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from spkidd.features import FeatureExtractor, FeatureParams
from spkidd.model import ModelConfig, SpeakerModel

SpeakerNet = SpeakerModel | EncoderSpeakerModel
"""The two networks a model file can hold: the pretrained encoder with a household GRU (the default), or the
network trained from scratch (`spkidd train --encoder none`, and every model file written before the encoder)."""

FORMAT_NAME = "spkidd-model"
FORMAT_VERSION = 1

T = TypeVar("T")


class ModelFileError(Exception):
    """A model file that cannot be used; the message names the file and the reason."""


def parameters_from(cls: type[T], data: dict[str, Any], what: str) -> T:
    """A parameter dataclass from the file's JSON. A key this spkidd does not know is refused rather than
    ignored: the file was made by another version, and silently dropping a setting would change the features or
    the network."""
    assert dataclasses.is_dataclass(cls)
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} parameters: {sorted(unknown)}")
    return cls(**data)


@dataclass
class ModelBundle:
    """A loaded model with what it needs around it."""

    model: SpeakerNet
    labels: list[str]
    features: FeatureParams
    name: str = "spkidd"
    decision: dict[str, float] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    enrollment: dict[str, dict[str, Any]] = field(default_factory=dict)

    def extractor(self) -> FeatureExtractor:
        return FeatureExtractor(self.features)

    @property
    def version(self) -> str:
        return str(self.training.get("created", ""))


def _metadata(bundle: ModelBundle) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "name": bundle.name,
        "labels": bundle.labels,
        "features": bundle.features.to_dict(),
        "architecture": bundle.model.config.to_dict(),
        "decision": bundle.decision,
        "training": bundle.training,
        "enrollment": bundle.enrollment,
    }


def check_writable(path: Path) -> None:
    """Fails early (before hours of training) if the model cannot be written to `path`."""
    directory = path.resolve().parent
    if not directory.is_dir():
        raise ModelFileError(f"{path}: folder {directory} does not exist")
    if not os.access(directory, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ModelFileError(f"{path}: not writable")


def save_model(bundle: ModelBundle, path: Path) -> None:
    """Writes atomically: a temporary file in the same folder, then a rename."""
    if len(bundle.labels) != bundle.model.config.n_speakers:
        raise ValueError("labels and speaker references differ in number")
    tensors = {k: v.detach().contiguous().clone() for k, v in bundle.model.state_dict().items()}
    header = {"format": FORMAT_NAME, "spkidd": json.dumps(_metadata(bundle))}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.resolve().parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(path: Path) -> ModelBundle:
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable model file (corrupt or truncated?): {exc}") from exc
    if header.get("format") != FORMAT_NAME or "spkidd" not in header:
        raise ModelFileError(f"{path}: not a spkidd model file (safetensors without spkidd metadata)")
    try:
        meta = json.loads(header["spkidd"])
        version = int(meta["format_version"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(f"{path}: damaged spkidd metadata: {exc}") from exc
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: model file format {version} is newer than this spkidd understands ({FORMAT_VERSION}); "
            "upgrade spkidd"
        )
    try:
        features = parameters_from(FeatureParams, meta["features"], "feature")
        labels = [str(label) for label in meta["labels"]]
        model = _build_network(meta["architecture"])
        model.load_state_dict(tensors, strict=True)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: inconsistent model file: {exc}") from exc
    if len(labels) != model.config.n_speakers or features.n_features != model.config.n_features:
        raise ModelFileError(f"{path}: labels or features do not match the network")
    model.eval()
    return ModelBundle(
        model=model,
        labels=labels,
        features=features,
        name=str(meta.get("name", "spkidd")),
        decision={k: float(v) for k, v in meta.get("decision", {}).items()},
        training=dict(meta.get("training", {})),
        enrollment=dict(meta.get("enrollment", {})),
    )


def _build_network(architecture: dict[str, Any]) -> SpeakerNet:
    if architecture.get("kind") == "ge2e":
        return EncoderSpeakerModel(parameters_from(EncoderModelConfig, architecture, "model"))
    return SpeakerModel(parameters_from(ModelConfig, architecture, "model"))
