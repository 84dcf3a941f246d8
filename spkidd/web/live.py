"""The live view's state and its fan-out to browsers: fed the same events as the MQTT publisher.

`handle()` runs on the event loop inside the pipelines' emit callback, so it only updates small dicts and appends
to each browser's bounded queue (the oldest message goes when a browser falls behind): a slow or closed browser
never slows the audio path.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from spkidd.events import UNKNOWN, Identification, SourceStatus, SpeechActivity
from spkidd.pipeline import PipelineEvent
from spkidd.turns import SHORTEST_TURN_S, Turn, UtteranceTurns

TIMELINE_S = 600.0
"""How far back the timeline reaches (who spoke when)."""
TIMELINE_SEGMENTS = 2 * int(TIMELINE_S / SHORTEST_TURN_S)
"""Turns kept per source at most: more than TIMELINE_S of speech in turns of SHORTEST_TURN_S, so a live source never
fills it, but a file replayed faster than real time (hours of audio in the ten minutes) cannot grow every page's
snapshot to megabytes."""
CLOCK_SLACK_S = 1.0
"""A turn that ends later than this after now was stamped before the wall clock was set back: it is dropped, or it
would hold every later turn in the timeline until the clock has caught up with it."""
CLIENT_QUEUE = 256
"""Messages held per browser before the oldest are dropped."""


@dataclass
class SourceView:
    """What the page shows for one source."""

    online: bool = False
    speaking: bool = False
    state: str = "none"
    """none (nothing heard yet), listening (an utterance began, no decision yet), identified or unknown."""
    speaker: str = "none"
    confidence: float = 0.0
    top_k: dict[str, float] = field(default_factory=dict)
    utterance_id: str = ""
    final: bool = False
    changed_at: float = 0.0
    timeline: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=TIMELINE_SEGMENTS))
    utterance: UtteranceTurns = field(default_factory=UtteranceTurns)
    """The utterance being heard: cut into turns of the timeline when its final arrives."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "online": self.online,
            "speaking": self.speaking,
            "state": self.state,
            "speaker": self.speaker,
            "confidence": round(self.confidence, 3),
            "top_k": {k: round(v, 3) for k, v in self.top_k.items()},
            "utterance_id": self.utterance_id,
            "final": self.final,
            "changed_at": self.changed_at,
        }


class Subscriber:
    """One browser's queue of JSON messages."""

    def __init__(self, size: int = CLIENT_QUEUE) -> None:
        self._messages: deque[str] = deque(maxlen=size)
        self._ready = asyncio.Event()
        self.dropped = 0

    def put(self, message: str) -> None:
        if len(self._messages) == self._messages.maxlen:
            self.dropped += 1
        self._messages.append(message)
        self._ready.set()

    async def get(self) -> str:
        while not self._messages:
            self._ready.clear()
            await self._ready.wait()
        return self._messages.popleft()


class LiveHub:
    """Per-source live state and the browsers subscribed to its changes."""

    def __init__(self, sources: Iterable[str], clock: Any = time.time) -> None:
        self._clock = clock
        self._views: dict[str, SourceView] = {name: SourceView() for name in sources}
        self._subscribers: set[Subscriber] = set()

    def set_sources(self, sources: Iterable[str]) -> None:
        """A reload added or removed sources."""
        wanted = list(sources)
        self._views = {name: self._views.get(name, SourceView()) for name in wanted}
        self._broadcast({"type": "snapshot", **self.snapshot()})

    def snapshot(self) -> dict[str, Any]:
        self._trim(self._clock())
        return {
            "now": self._clock(),
            "timeline_s": TIMELINE_S,
            "sources": {name: {**v.to_dict(), "timeline": list(v.timeline)} for name, v in self._views.items()},
        }

    def subscribe(self) -> Subscriber:
        subscriber = Subscriber()
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def handle(self, event: PipelineEvent) -> None:
        """The emit callback beside the publisher's; never blocks."""
        view = self._views.get(event.source)
        if view is None:
            return
        now = self._clock()
        segments: list[dict[str, Any]] = []
        if isinstance(event, SourceStatus):
            view.online = event.online
            if not event.online:
                view.speaking = False
        elif isinstance(event, SpeechActivity):
            view.speaking = event.speaking
            view.online = True
            if event.speaking:
                view.utterance = UtteranceTurns()
                view.state, view.speaker, view.confidence, view.top_k, view.final = "listening", "", 0.0, {}, False
        elif isinstance(event, Identification):
            segments = self._identify(view, event, now)
        self._broadcast(
            {"type": "source", "source": event.source, "now": now, "view": view.to_dict(), "segments": segments}
        )

    def _identify(self, view: SourceView, event: Identification, now: float) -> list[dict[str, Any]]:
        view.state = "unknown" if event.speaker == UNKNOWN else "identified"
        view.speaker = event.speaker
        view.confidence = event.confidence
        view.top_k = dict(event.top_k)
        view.utterance_id = event.utterance_id
        view.final = event.final
        view.changed_at = now
        segments = [_segment(turn, event, now) for turn in view.utterance.add(event)]
        if not segments:
            return []
        view.timeline.extend(segments)
        self._trim(now)
        return segments

    def _trim(self, now: float) -> None:
        for view in self._views.values():
            while view.timeline and not now - TIMELINE_S <= view.timeline[0]["end"] <= now + CLOCK_SLACK_S:
                view.timeline.popleft()

    def _broadcast(self, message: dict[str, Any]) -> None:
        if not self._subscribers:
            return
        text = json.dumps(message)
        for subscriber in self._subscribers:
            subscriber.put(text)


def _segment(turn: Turn, final: Identification, now: float) -> dict[str, Any]:
    """A turn on the wall clock, the final's arrival standing for the utterance's end."""
    return {
        "start": round(now - (final.end - turn.start), 3),
        "end": round(now - (final.end - turn.end), 3),
        "speaker": turn.speaker,
        "confidence": round(turn.confidence, 3),
        "utterance_id": turn.utterance_id,
    }
