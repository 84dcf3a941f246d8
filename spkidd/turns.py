"""Who spoke when, looking back on the decider's events: each utterance cut into turns, for `identify`'s timeline,
the web page's and `spkidd listen`'s.

Live, a change of voice inside an utterance is named late: the decider says `changed` once the encoder's oldest
window holds the new voice, and its two 2-s windows restart in turn every second, so that window began one to two
seconds before the event. Looking back, the cut goes CHANGE_LAG_S before the `changed` event, every stretch takes
the name the decider gave it, and the last stretch the utterance's final answer (which may differ from what was said
while it lasted: the final is the decider's last word).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from spkidd.events import UNKNOWN, Identification

CHANGE_LAG_S = 1.5
"""The middle of the oldest window's age when a change is named (one to two seconds). On development conversations
(P2's held-out training audio, two models; `benchmarks/s1_conversation.py --split dev`) the turns put the right name
on 66.8 / 67.4% of the speech of back-to-back turns with it, against 66.2 / 66.9% with 1 s, 55.4 / 56.2% with 2 s
and 16.4 / 12.0% with every utterance given its final answer alone; on turns with pauses between them it costs
nothing against that (77.1 / 84.9% either way)."""


SHORTEST_TURN_S = 0.3
"""A name the decider gave for less than this (two changes in a row, the first a passing doubt) is no turn: its time
goes to the turn after it."""


@dataclass(frozen=True)
class Turn:
    """One speaker's stretch of one utterance, in the stream's audio seconds."""

    start: float
    end: float
    speaker: str
    confidence: float
    utterance_id: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def utterance_turns(events: Sequence[Identification]) -> list[Turn]:
    """One utterance's events, in order -> its turns; none before its final event."""
    final = next((event for event in reversed(events) if event.final), None)
    if final is None:
        return []
    named = [event for event in events if not event.final and event.speaker != UNKNOWN]
    turns: list[Turn] = []
    start = min(event.start for event in events)
    for before, after in itertools.pairwise(named):
        if after.speaker == before.speaker:
            continue
        cut = min(max(start, after.end - CHANGE_LAG_S), final.end)
        if cut > start:
            turns.append(Turn(start, cut, before.speaker, before.confidence, final.utterance_id))
            start = cut
    turns.append(Turn(start, final.end, final.speaker, final.confidence, final.utterance_id))
    return _merged(_without_flickers(turns))


@dataclass
class UtteranceTurns:
    """The events of the utterance being heard, cut into turns when its final arrives: how the web page's timeline
    and `spkidd listen`'s history follow a live stream."""

    events: list[Identification] = field(default_factory=list)

    def add(self, event: Identification) -> list[Turn]:
        """The utterance's turns when `event` is its final, else none; an event of another utterance starts anew."""
        if self.events and self.events[0].utterance_id != event.utterance_id:
            self.events = []
        self.events.append(event)
        if not event.final:
            return []
        turns = utterance_turns(self.events)
        self.events = []
        return turns


def who_spoke_when(events: Iterable[Identification]) -> list[Turn]:
    """A stream's events -> the turns of all its finished utterances, in order."""
    utterances: dict[str, list[Identification]] = {}
    for event in events:
        utterances.setdefault(event.utterance_id, []).append(event)
    return [turn for utterance in utterances.values() for turn in utterance_turns(utterance)]


def _without_flickers(turns: list[Turn]) -> list[Turn]:
    """Turns shorter than SHORTEST_TURN_S given to the turn after them (the last turn, the final's, always stays)."""
    kept: list[Turn] = []
    start = turns[0].start
    for turn in turns[:-1]:
        if turn.end - start >= SHORTEST_TURN_S:
            kept.append(replace(turn, start=start))
            start = turn.end
    return [*kept, replace(turns[-1], start=start)]


def _merged(turns: list[Turn]) -> list[Turn]:
    """Neighbouring turns of one speaker as one (a name, another, the first again when the final overrules)."""
    merged: list[Turn] = []
    for turn in turns:
        if merged and merged[-1].speaker == turn.speaker:
            last = merged[-1]
            merged[-1] = replace(last, end=turn.end, confidence=max(last.confidence, turn.confidence))
        else:
            merged.append(turn)
    return merged


def clock(seconds: float, decimals: int = 1) -> str:
    """A position in a recording as a clock reads it, m:ss or h:mm:ss (with `decimals` of a second): 3412.5 s of an
    hour's podcast is 56:52.5, which a person finds in a player, where "3412.5 s" has to be worked out."""
    whole, fraction = divmod(round(seconds * 10**decimals), 10**decimals)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
    return f"{text}.{fraction:0{decimals}d}" if decimals else text


def amount_of_speech(seconds: float) -> str:
    """How long a voice spoke, with its unit: "3.5 s" of a short file (a clock's 0:04 hid the tenths), "12 min 5 s"
    or "1 h 2 min" of a long one."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60} min"
