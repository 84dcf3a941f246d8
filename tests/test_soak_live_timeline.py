"""The web page's live timeline under a file replayed as fast as possible (hours of audio in minutes, as the soak
benchmark and `realtime = false` sources do): it keeps the newest turns within a bound, so the snapshot every
browser gets on connecting (and on every reload) stays small; during the soak it had grown to 1.5 MB."""

from __future__ import annotations

import json

from spkidd.events import Identification, SpeechActivity
from spkidd.web.live import TIMELINE_SEGMENTS, LiveHub


def test_hours_of_turns_within_ten_minutes_keep_the_newest_within_the_bound() -> None:
    clock = [1_800_000_000.0]
    hub = LiveHub(["room"], clock=lambda: clock[0])
    turns = TIMELINE_SEGMENTS + 1000
    for n in range(turns):
        clock[0] += 0.1  # ten utterances of a second each per wall second: ten times real time
        utterance_id = f"room-{n:06d}"
        hub.handle(SpeechActivity("room", utterance_id, True, float(n)))
        hub.handle(Identification("room", utterance_id, "final", "alice", 0.9, {"alice": 0.9}, True, n, n + 1.0, 1.0))
        hub.handle(SpeechActivity("room", utterance_id, False, n + 1.0))
    timeline = hub.snapshot()["sources"]["room"]["timeline"]
    assert len(timeline) == TIMELINE_SEGMENTS
    assert timeline[-1]["utterance_id"] == f"room-{turns - 1:06d}"
    assert len(json.dumps(hub.snapshot())) < 1_000_000
