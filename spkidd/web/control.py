"""What the page needs from the running daemon, as a small interface (the daemon implements it)."""

from __future__ import annotations

from typing import Protocol

from spkidd.health import DaemonHealth
from spkidd.modelfile import ModelBundle


class DaemonControl(Protocol):
    @property
    def bundle(self) -> ModelBundle | None:
        """The model the streams run now."""

    def use_bundle(self, bundle: ModelBundle) -> None:
        """Hands a new model (already saved to the model file) to every stream, from its next utterance on."""

    def health(self) -> DaemonHealth: ...
