"""The model file: safetensors weights with spkidd's JSON metadata in the safetensors header.

One file holds everything the daemon needs to reproduce training's features and labels. Loading reads tensors
and JSON only (never pickle), and refuses corrupt, foreign or newer files with a message that says which.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from spkidd.atomic_file import replaced_atomically
from spkidd.encoder_model import EncoderModelConfig, EncoderSpeakerModel
from spkidd.features import FeatureExtractor, FeatureParams
from spkidd.model import ModelConfig, SpeakerModel

SpeakerNet = SpeakerModel | EncoderSpeakerModel
"""The two networks a model file can hold: the pretrained encoder with a household GRU (the default), or the
network trained from scratch (`spkidd train --encoder none`, and every model file written before the encoder)."""

FORMAT_NAME = "spkidd-model"
FORMAT_VERSION = 2
ENCODER_MODELS_SINCE = 2
"""Format 2 stores the encoder model's references with the encoder's half beside the head's (what the `unknown`
threshold is held to); format-1 encoder models lack it and are refused with a word to retrain. Scratch models of
either format load."""

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
    revision: int = 0
    """How many times enrollment has changed the speakers since training (enroll, forget, rename)."""

    def extractor(self) -> FeatureExtractor:
        return FeatureExtractor(self.features)

    @property
    def version(self) -> str:
        """Training time, plus the revision after enrollment changed the speakers: events and logs name the exact
        model that answered."""
        created = str(self.training.get("created", ""))
        return f"{created}+r{self.revision}" if self.revision else created

    def edited(self, model: SpeakerNet, labels: list[str], enrollment: dict[str, dict[str, Any]]) -> ModelBundle:
        """The same model with other speakers: a new revision."""
        return dataclasses.replace(self, model=model, labels=labels, enrollment=enrollment, revision=self.revision + 1)


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
        "revision": bundle.revision,
    }


def check_writable(path: Path) -> None:
    """Fails early (before hours of training) if the model cannot be written to `path`; a folder there was found
    only when the model was written, after the whole training."""
    if path.is_dir():
        raise ModelFileError(f"{path} is a folder; give the model file's name, e.g. {path / 'voices.safetensors'}")
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
    with replaced_atomically(path) as temporary:
        save_file(tensors, str(temporary), metadata=header)
        _keep_owner_and_mode(path, temporary)


def _keep_owner_and_mode(old: Path, new: Path) -> None:
    """A rewritten model keeps the old file's owner and mode (`sudo spkidd enroll` on the daemon's model must not
    lock the daemon's user out of it); a new file gets 0644 less the umask, like any file."""
    try:
        stat = old.stat()
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(new, 0o644 & ~umask)
        return
    os.chmod(new, stat.st_mode & 0o7777)
    if os.geteuid() == 0:
        os.chown(new, stat.st_uid, stat.st_gid)


def load_model(path: Path) -> ModelBundle:
    """Every way a file can be unusable ends in a ModelFileError that names the file and says what to do."""
    path = Path(path)
    tensors, meta, version = _read_model_file(path)
    try:
        return _bundle_from(path, meta, version, tensors)
    except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as exc:
        raise ModelFileError(f"{path}: inconsistent model file: {exc}") from exc


def _read_model_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], int]:
    """The tensors, spkidd's metadata and its format version, from a file this spkidd can read."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if not os.access(path, os.R_OK):
        raise ModelFileError(f"{path}: permission denied (the file is not readable by this user)")
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
    return tensors, meta, version


def _bundle_from(path: Path, meta: dict[str, Any], version: int, tensors: dict[str, torch.Tensor]) -> ModelBundle:
    features = parameters_from(FeatureParams, _table(meta, "features"), "feature")
    labels = meta["labels"]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise TypeError("labels must be a list of names")
    architecture = _table(meta, "architecture")
    if architecture.get("kind") == "ge2e" and version < ENCODER_MODELS_SINCE:
        raise ModelFileError(
            f"{path}: written by an older spkidd (model file format {version}), whose encoder models scored "
            "`unknown` differently; train it again with `spkidd train`"
        )
    model = _build_network(architecture, tensors)
    if len(labels) != model.config.n_speakers or features.n_features != model.config.n_features:
        raise ValueError("labels or features do not match the network")
    return ModelBundle(
        model=model.eval(),
        labels=labels,
        features=features,
        name=str(meta.get("name", "spkidd")),
        decision={str(k): float(v) for k, v in _table(meta, "decision").items()},
        training=_table(meta, "training"),
        enrollment={str(k): dict(v) for k, v in _table(meta, "enrollment").items()},
        revision=int(meta.get("revision", 0)),
    )


def _table(meta: dict[str, Any], key: str) -> dict[str, Any]:
    value = meta.get(key, {})
    if not isinstance(value, dict):
        raise TypeError(f"{key} must be a table, not {type(value).__name__}")
    return value


def _build_network(architecture: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SpeakerNet:
    """The network the file declares, checked against its tensors on the meta device first: a crafted file that
    declares a huge network is refused before anything is allocated."""
    make: Callable[[], SpeakerNet]
    if architecture.get("kind") == "ge2e":
        encoder_config = parameters_from(EncoderModelConfig, architecture, "model")
        make = partial(EncoderSpeakerModel, encoder_config)
    else:
        scratch_config = parameters_from(ModelConfig, architecture, "model")
        make = partial(SpeakerModel, scratch_config)
    with torch.device("meta"):
        declared = {name: tuple(t.shape) for name, t in make().state_dict().items()}
    stored = {name: tuple(t.shape) for name, t in tensors.items()}
    if declared != stored:
        differing = sorted(set(declared) ^ set(stored)) or [n for n in declared if declared[n] != stored[n]]
        raise ValueError(f"the declared architecture does not match the stored tensors ({differing[:3]})")
    model = make()
    model.load_state_dict(tensors, strict=True)
    return model
