"""Who spoke when, looking back on the decider's events (spkidd.turns)."""

from __future__ import annotations

import pytest

from spkidd.events import UNKNOWN, EventType, Identification
from spkidd.turns import CHANGE_LAG_S, SHORTEST_TURN_S, Turn, utterance_turns, who_spoke_when


def _event(kind: EventType, speaker: str, end: float, utterance: str = "u1", start: float = 10.0) -> Identification:
    return Identification("kitchen", utterance, kind, speaker, 0.9, {}, kind in ("final", "unknown"), start, end, 0.0)


def test_an_utterance_without_a_change_is_one_turn_of_its_final_answer() -> None:
    events = [_event("identified", "alice", 11.0), _event("final", "alice", 13.0)]
    assert utterance_turns(events) == [Turn(10.0, 13.0, "alice", 0.9, "u1")]


def test_a_change_is_cut_the_lag_before_it_was_named() -> None:
    events = [_event("identified", "alice", 11.0), _event("changed", "bob", 14.0), _event("final", "bob", 16.0)]
    cut = 14.0 - CHANGE_LAG_S
    assert utterance_turns(events) == [Turn(10.0, cut, "alice", 0.9, "u1"), Turn(cut, 16.0, "bob", 0.9, "u1")]


def test_a_change_named_early_in_the_utterance_takes_it_from_its_start() -> None:
    """A first name that did not hold (changed within the lag of the start) leaves no turn."""
    events = [_event("identified", "alice", 10.5), _event("changed", "bob", 11.0), _event("final", "bob", 13.0)]
    assert utterance_turns(events) == [Turn(10.0, 13.0, "bob", 0.9, "u1")]


def test_the_final_answer_names_the_last_stretch_and_unknown_is_kept() -> None:
    events = [_event("identified", "alice", 11.0), _event("changed", "bob", 14.0), _event("unknown", UNKNOWN, 16.0)]
    turns = utterance_turns(events)
    assert [(t.speaker, t.end) for t in turns] == [("alice", 14.0 - CHANGE_LAG_S), (UNKNOWN, 16.0)]


def test_back_and_forth_gives_a_turn_each_and_neighbours_of_one_voice_merge() -> None:
    events = [
        _event("identified", "alice", 11.0),
        _event("changed", "bob", 14.0),
        _event("changed", "alice", 18.0),
        _event("final", "alice", 20.0),
    ]
    assert [(t.speaker, t.start, t.end) for t in utterance_turns(events)] == [
        ("alice", 10.0, 14.0 - CHANGE_LAG_S),
        ("bob", 14.0 - CHANGE_LAG_S, 18.0 - CHANGE_LAG_S),
        ("alice", 18.0 - CHANGE_LAG_S, 20.0),
    ]
    overruled = [_event("identified", "alice", 11.0), _event("changed", "bob", 14.0), _event("final", "alice", 16.0)]
    assert [(t.speaker, t.start, t.end) for t in utterance_turns(overruled)] == [("alice", 10.0, 16.0)]


@pytest.mark.parametrize("finished", [True, False])
def test_a_stream_gives_the_turns_of_its_finished_utterances_in_order(finished: bool) -> None:
    events = [
        _event("identified", "alice", 11.0),
        _event("final", "alice", 12.0),
        _event("identified", "bob", 13.5, "u2", 13.0),
    ]
    if finished:
        events.append(_event("final", "bob", 15.0, "u2", 13.0))
    expected = [("alice", 10.0, 12.0)] + ([("bob", 13.0, 15.0)] if finished else [])
    assert [(t.speaker, t.start, t.end) for t in who_spoke_when(events)] == expected


def test_a_name_given_for_a_moment_is_no_turn() -> None:
    """Two changes within SHORTEST_TURN_S: the passing name's time goes to the turn after it."""
    events = [
        _event("identified", "alice", 11.0),
        _event("changed", "carol", 14.0),
        _event("changed", "bob", 14.0 + SHORTEST_TURN_S / 2),
        _event("final", "bob", 16.0),
    ]
    cut = 14.0 - CHANGE_LAG_S
    assert [(t.speaker, t.start, t.end) for t in utterance_turns(events)] == [("alice", 10.0, cut), ("bob", cut, 16.0)]
