"""Test helpers for `spkidd run`: config files, model files, and the daemon as a child process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from spkidd.features import FeatureParams
from spkidd.model import ModelConfig, SpeakerModel
from spkidd.modelfile import ModelBundle, load_model, save_model
from spkidd.synthetic import synth_speech
from tests.support.mosquitto import Collector, Received, kill_group

SPKIDD = str(Path(sys.executable).parent / "spkidd")
"""The console script the package installs, beside this interpreter: the venv's spkidd however pytest was started."""
REPO = Path(__file__).resolve().parents[2]


LONG_UTTERANCES = "[vad]\nhangover_ms = 5000\nmax_utterance_s = 120\n"
"""Gate settings under which a test conversation's pauses never end an utterance: once one is open it stays open
for far longer than a test needs, so a signal sent then is certain to land in the middle of it."""


def random_model(path: Path, labels: list[str]) -> Path:
    """An untrained but valid model file: for tests of the daemon's plumbing, not of identification."""
    torch.manual_seed(0)
    features = FeatureParams()
    model = SpeakerModel(ModelConfig(n_features=features.n_features, n_speakers=len(labels), hidden=32, layers=1))
    save_model(ModelBundle(model=model.eval(), labels=labels, features=features, name="random"), path)
    return path


def relabelled_model(source: Path, path: Path, rename: dict[str, str]) -> Path:
    """The same network under other speaker names: a reload with it is visible in every event."""
    bundle = load_model(source)
    bundle.labels = [rename.get(label, label) for label in bundle.labels]
    save_model(bundle, path)
    return path


def conversation(directory: Path, turns: list[tuple[str, str]], lead_s: float = 1.0, gap_s: float = 1.2) -> Path:
    """One WAV with the given (voice, sentence) turns separated by silence."""
    rate = 16000
    parts = [np.zeros(int(lead_s * rate), dtype=np.float32)]
    for i, (voice, text) in enumerate(turns):
        clip, clip_rate = sf.read(synth_speech(voice, text, directory / f"turn{i}.wav"), dtype="float32")
        assert clip_rate == rate
        parts += [clip, np.zeros(int(gap_s * rate), dtype=np.float32)]
    path = directory / "conversation.wav"
    sf.write(path, np.concatenate(parts), rate, subtype="PCM_16")
    return path


def file_source(path: Path, name: str = "kitchen", *, realtime: bool = True, loop: bool | None = True) -> str:
    """A `[[sources]]` table replaying `path` (`loop` None: the key left out, as a user may)."""
    table = f'[[sources]]\nname = "{name}"\nkind = "file"\npath = "{path}"\nrealtime = {str(realtime).lower()}\n'
    return table if loop is None else table + f"loop = {str(loop).lower()}\n"


def write_config(
    path: Path, model: Path, sources: str, mqtt: str, extra: str = "", instance: str = "testhouse"
) -> Path:
    path.write_text(
        f'instance = "{instance}"\nmodel = "{model}"\n{sources}\n[mqtt]\n{mqtt}\n'
        "keepalive = 5\nbackoff_initial_s = 0.2\nbackoff_max_s = 1.0\nrediscovery_max_delay_s = 0.0\n"
        f"{extra}\n"
    )
    path.chmod(0o600)
    return path


class DaemonProcess:
    """`spkidd run --config PATH` in its own process group, its output in a log file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [SPKIDD, "run", "--config", str(config)],
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_log(self, predicate: Callable[[str], bool], timeout: float = 90.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if predicate(text):
                return text
            if self.process.poll() is not None:
                raise AssertionError(f"daemon exited with {self.process.returncode}:\n{text[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting in the daemon's log:\n{text[-3000:]}")
            time.sleep(0.1)

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.process.wait(timeout)

    def kill(self) -> None:
        kill_group(self.process, signal.SIGKILL)


def _events(messages: list[Received], prefix: str, source: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic == f"{prefix}/{source}/event"]


def open_utterance(messages: list[Received], prefix: str, source: str) -> str | None:
    """The utterance that has events and no final yet, while `speaking` is ON."""
    speaking = [m.payload for m in messages if m.topic == f"{prefix}/{source}/speaking"]
    events = _events(messages, prefix, source)
    if speaking[-1:] != [b"ON"] or not events or events[-1]["final"]:
        return None
    return str(events[-1]["utterance_id"])


async def sigterm_mid_utterance(
    sub: Collector, daemon: DaemonProcess, prefix: str, source: str, after: int = 0
) -> tuple[str, list[Received]]:
    """SIGTERM while an utterance of `source` is open (run the daemon with LONG_UTTERANCES, so it cannot close by
    itself meanwhile); proves its final was made after the signal (the event's own `time`) and reached the broker
    before the daemon's `offline`, and that the daemon exited 0. Returns the utterance and what came after the
    signal, up to and including that `offline`."""
    await sub.wait_for(lambda ms: open_utterance(ms[after:], prefix, source) is not None, timeout=60)
    utterance = open_utterance(sub.messages[after:], prefix, source)
    assert utterance is not None
    seen = len(sub.messages)
    now = datetime.now(UTC)
    signalled = now.replace(microsecond=now.microsecond // 1000 * 1000)  # events' times have milliseconds
    daemon.signal(signal.SIGTERM)
    assert await asyncio.to_thread(daemon.wait, 60) == 0
    await sub.wait_for(lambda ms: any(m.topic == f"{prefix}/status" and m.payload == b"offline" for m in ms[seen:]))
    after_signal = sub.messages[seen:]
    offline = next(i for i, m in enumerate(after_signal) if m.topic == f"{prefix}/status" and m.payload == b"offline")
    after_signal = after_signal[: offline + 1]
    finals = [e for e in _events(after_signal, prefix, source) if e["utterance_id"] == utterance and e["final"]]
    assert len(finals) == 1, (utterance, _events(sub.messages[after:], prefix, source))
    made = datetime.fromisoformat(finals[0]["time"].replace("Z", "+00:00"))
    assert made >= signalled, (utterance, finals[0]["time"], signalled.isoformat())
    return utterance, after_signal
