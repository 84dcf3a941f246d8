"""`spkidd listen --json --fast` as a user runs it: a child process, JSON lines on stdout, logs on stderr."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np

from spkidd.synthetic import synth_audio
from tests.support.daemon import SPKIDD
from tests.support.streaming import save_random_model, silence, trim, write_wav

EVENT_KEYS = frozenset(
    {"source", "utterance_id", "start", "end", "speaker", "confidence", "final", "top_k", "event_type", "speech_s"}
    | {"time", "model"}
)
"""What every event line carries."""


def test_listen_json_fast_prints_one_event_per_line(tmp_path: Path) -> None:
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob", "carol"])
    speech = trim(synth_audio("carol", "Set the thermostat to twenty one degrees for the evening."))
    wav = write_wav(tmp_path / "talk.wav", np.concatenate([silence(0.5), speech, silence(1.0), speech, silence(0.6)]))
    options = ["--json", "--fast", "--min-score", "-1", "--name", "desk", "--top", "2"]
    command = [SPKIDD, "listen", str(model), "--source", str(wav), *options]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events and all(set(e) >= EVENT_KEYS for e in events)
    finals = [e for e in events if e["final"]]
    assert [f["utterance_id"] for f in finals] == ["desk-000001", "desk-000002"]
    assert all(e["source"] == "desk" and len(e["top_k"]) == 2 for e in events)
    assert all(f["start"] < f["end"] and f["speaker"] in ("alice", "bob", "carol") for f in finals)
    # audio-time stamps, not wall time: the second utterance starts after the first plus the pause
    assert finals[1]["start"] > finals[0]["end"] + 0.5


def test_listen_refuses_an_unknown_source(tmp_path: Path) -> None:
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    proc = subprocess.run(
        [SPKIDD, "listen", str(model), "--source", "nosuch:thing", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stdout == "" and "not an existing file" in proc.stderr


def test_the_terminal_view_shows_speaker_bars_and_who_spoke_when() -> None:
    from rich.console import Console

    from spkidd.events import Identification, SourceStatus, SpeechActivity
    from spkidd.listen import ListenView
    from spkidd.turns import CHANGE_LAG_S

    view = ListenView("kitchen", "voices v1")
    view.on_event(SourceStatus("kitchen", True, "replaying talk.wav"))
    view.on_event(SpeechActivity("kitchen", "kitchen-000001", True, 0.5))
    view.on_progress("kitchen-000001", {"alice": 0.8, "bob": 0.15})
    partial = Identification(
        "kitchen", "kitchen-000001", "identified", "alice", 0.8, {"alice": 0.8}, False, 0.5, 1.1, 0.6
    )
    view.on_event(partial)
    console = Console(record=True, width=100)
    console.print(view.render())
    live = console.export_text()
    assert "speaking" in live and "now: alice" in live and "replaying talk.wav" in live
    assert re.search(r"alice +[█·]{30} +80%", live), live
    final = Identification("kitchen", "kitchen-000001", "final", "alice", 0.9, {"alice": 0.9}, True, 0.5, 2.4, 1.9)
    view.on_event(final)
    view.on_event(SpeechActivity("kitchen", "kitchen-000001", False, 2.4))
    console.print(view.render())
    after = console.export_text()
    assert "silent" in after and "kitchen-000001" in after and "0.5-2.4" in after
    view.on_event(SpeechActivity("kitchen", "kitchen-000002", True, 3.0))
    for kind, speaker, end in (("identified", "alice", 4.0), ("changed", "bob", 6.5), ("final", "bob", 8.0)):
        view.on_event(Identification("kitchen", "kitchen-000002", kind, speaker, 0.9, {}, kind == "final", 3.0, end, 0))
    console.print(view.render())
    turns = console.export_text()
    cut = 6.5 - CHANGE_LAG_S
    assert f"3.0-{cut:.1f}" in turns and f"{cut:.1f}-8.0" in turns, "an utterance with a change shows two turns"


def test_listen_fails_with_the_reason_when_its_source_fails(tmp_path: Path) -> None:
    """A file that is no audio passes the source check (it exists) and fails when it is decoded: that is an error,
    not the end of a recording."""
    model = save_random_model(tmp_path / "m.safetensors", ["alice", "bob"])
    notes = tmp_path / "notes.wav"
    notes.write_text("a shopping list, not a recording")
    proc = subprocess.run(
        [SPKIDD, "listen", str(model), "--source", str(notes), "--json", "--fast"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stdout == "" and "error: source failed" in proc.stderr and str(notes) in proc.stderr
