"""The live view's fan-out (a unit test of spkidd.web.live): browsers that read slowly or never cost the audio
path nothing, and the state a page shows follows the events the MQTT publisher gets."""

from __future__ import annotations

import asyncio
import inspect
import json

from spkidd.events import Identification, SourceStatus, SpeechActivity
from spkidd.turns import CHANGE_LAG_S
from spkidd.web.live import CLIENT_QUEUE, TIMELINE_S, LiveHub


def _final(source: str, n: int, speaker: str) -> Identification:
    return Identification(source, f"{source}-{n:06d}", "final", speaker, 0.9, {speaker: 0.9}, True, 0.0, 1.0, 1.0)


def test_a_browser_that_never_reads_keeps_a_bounded_queue_and_costs_the_emitter_nothing() -> None:
    """The emitter's cost is proven by what handle() is, not by a timing: a plain call (nothing to await, so it
    cannot wait for a browser) that leaves a stalled browser the newest messages and counts the rest as dropped."""
    assert not inspect.iscoroutinefunction(LiveHub.handle), "handle() runs inside the emit callback: never awaits"
    clock = [0.0]
    hub = LiveHub(["kitchen"], clock=lambda: clock[0])
    stalled = hub.subscribe()
    for n in range(20_000):
        clock[0] = float(n)
        assert hub.handle(SpeechActivity("kitchen", f"kitchen-{n:06d}", n % 2 == 0, float(n))) is None
    assert len(stalled._messages) == CLIENT_QUEUE and stalled.dropped == 20_000 - CLIENT_QUEUE
    kept = [json.loads(message)["now"] for message in stalled._messages]
    assert kept == [float(n) for n in range(20_000 - CLIENT_QUEUE, 20_000)], "the oldest go, the newest stay in order"
    hub.unsubscribe(stalled)
    assert hub.subscribers == 0


async def test_a_reading_browser_gets_every_change_in_order_and_the_snapshot_has_the_timeline() -> None:
    clock = [1000.0]
    hub = LiveHub(["kitchen", "hall"], clock=lambda: clock[0])
    browser = hub.subscribe()
    hub.handle(SourceStatus("kitchen", True))
    hub.handle(SpeechActivity("kitchen", "kitchen-000001", True, 0.5))
    clock[0] += 2.0
    hub.handle(_final("kitchen", 1, "alice"))
    hub.handle(SpeechActivity("kitchen", "kitchen-000001", False, 2.5))
    hub.handle(_final("nowhere", 1, "bob"))  # a source removed by a reload: ignored
    got = [json.loads(await asyncio.wait_for(browser.get(), 1)) for _ in range(4)]
    assert [m["view"]["online"] for m in got] == [True, True, True, True]
    assert got[1]["view"]["state"] == "listening" and got[1]["view"]["speaking"] is True
    assert got[2]["view"]["speaker"] == "alice" and got[2]["segments"] == [
        {"start": 1001.0, "end": 1002.0, "speaker": "alice", "confidence": 0.9, "utterance_id": "kitchen-000001"}
    ]
    assert got[3]["view"]["speaking"] is False and got[3]["segments"] == []
    snapshot = hub.snapshot()
    assert snapshot["sources"]["hall"]["state"] == "none" and snapshot["sources"]["hall"]["online"] is False
    assert [s["speaker"] for s in snapshot["sources"]["kitchen"]["timeline"]] == ["alice"]
    clock[0] += TIMELINE_S + 1
    assert hub.snapshot()["sources"]["kitchen"]["timeline"] == [], "the timeline keeps only the last minutes"
    hub.set_sources(["hall"])
    assert list(hub.snapshot()["sources"]) == ["hall"]


async def test_an_utterance_with_a_change_of_voice_reaches_the_timeline_as_two_turns() -> None:
    """The page's timeline is cut as `identify`'s is (spkidd.turns), on the wall clock of the final's arrival."""
    clock = [1000.0]
    hub = LiveHub(["kitchen"], clock=lambda: clock[0])
    browser = hub.subscribe()
    hub.handle(SpeechActivity("kitchen", "kitchen-000001", True, 0.0))
    for kind, speaker, end in (("identified", "alice", 1.0), ("changed", "bob", 4.0), ("final", "bob", 6.0)):
        clock[0] = 1000.0 + end
        hub.handle(Identification("kitchen", "kitchen-000001", kind, speaker, 0.9, {}, kind == "final", 0.0, end, end))
    got = [json.loads(await asyncio.wait_for(browser.get(), 1)) for _ in range(4)]
    assert [m["segments"] for m in got[:3]] == [[], [], []]
    cut = 1004.0 - CHANGE_LAG_S
    assert [(s["speaker"], s["start"], s["end"]) for s in got[3]["segments"]] == [
        ("alice", 1000.0, cut),
        ("bob", cut, 1006.0),
    ]
    assert [s["speaker"] for s in hub.snapshot()["sources"]["kitchen"]["timeline"]] == ["alice", "bob"]
