"""What the page needs from the running daemon, as a small interface (the daemon implements it)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from spkidd.health import DaemonHealth
from spkidd.modelfile import ModelBundle


class DaemonControl(Protocol):
    @property
    def bundle(self) -> ModelBundle | None:
        """The model the streams run now."""

    @property
    def model_path(self) -> Path:
        """The model file (a reload may point the daemon at another one)."""

    @property
    def clips_folder(self) -> Path | None:
        """[unknown_clips] folder, None when keeping clips is off."""

    def use_bundle(self, bundle: ModelBundle) -> None:
        """Hands a new model (already saved to the model file) to every stream, from its next utterance on."""

    def health(self) -> DaemonHealth: ...
