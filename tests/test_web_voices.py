"""The page's voice changes (a unit test of spkidd.web.voices): the model work runs in a worker thread, never on
the event loop, and the model file is read fresh and written back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from spkidd import enrollment
from spkidd.modelfile import ModelBundle, load_model
from spkidd.web import voices
from spkidd.web.voices import VoiceError, VoiceKeeper
from tests.support.daemon import random_model


class _Control:
    def __init__(self, model: Path) -> None:
        self.model_path = model
        self.bundle: ModelBundle | None = load_model(model)

    def use_bundle(self, bundle: ModelBundle) -> None:
        self.bundle = bundle


async def test_forget_and_rename_build_the_new_model_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = _Control(random_model(tmp_path / "m.safetensors", ["alice", "bob", "carol"]))
    keeper = VoiceKeeper(control)
    threads: list[int] = []

    def traced(change: Callable[..., ModelBundle]) -> Callable[..., ModelBundle]:
        def run(*args: object) -> ModelBundle:
            threads.append(threading.get_ident())
            return change(*args)

        return run

    monkeypatch.setattr(voices, "forget", traced(enrollment.forget))
    monkeypatch.setattr(voices, "rename", traced(enrollment.rename))
    await keeper.forget("carol")
    assert await keeper.rename("bob", "robert") == "robert"
    assert threads and threading.get_ident() not in threads, "the model work ran in a worker thread"
    assert load_model(control.model_path).labels == ["alice", "robert"]
    assert control.bundle is not None and control.bundle.labels == ["alice", "robert"]

    with pytest.raises(VoiceError, match="no speaker 'zoe'"):
        await keeper.forget("zoe")
    await keeper.forget("robert")
    with pytest.raises(VoiceError, match="only speaker"):
        await keeper.forget("alice")
