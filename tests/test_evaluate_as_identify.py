"""`spkidd evaluate` counts for a long recording the name `spkidd identify` gives it: a conversation is named after
the voice that spoke most, and a voice the timeline never heard is not named from the chunks' average (a tester's
stranger was "named right" by evaluate while identify answered `unknown`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from spkidd.audio_cache import AudioCache
from spkidd.dataset import Row
from spkidd.evaluation import answers_at_threshold, chunk_seconds, closed_set_report, outcomes_at_threshold, score_rows
from spkidd.events import UNKNOWN
from spkidd.identify import identify_file
from spkidd.modelfile import ModelBundle, load_model
from tests.conftest import HELD_OUT_SENTENCES
from tests.support.daemon import conversation

RECORDINGS = {
    "alice_alone": [("alice", s) for s in HELD_OUT_SENTENCES[:3]],
    "carol_then_bob": [
        ("carol", HELD_OUT_SENTENCES[0]),
        ("bob", HELD_OUT_SENTENCES[1]),
        ("bob", HELD_OUT_SENTENCES[2]),
    ],
    "bob_then_carol": [
        ("bob", HELD_OUT_SENTENCES[3]),
        ("carol", HELD_OUT_SENTENCES[0]),
        ("carol", HELD_OUT_SENTENCES[1]),
    ],
    "dave_a_stranger": [("dave", s) for s in HELD_OUT_SENTENCES[:3]],
    "two_strangers": [("erin", HELD_OUT_SENTENCES[0]), ("frank", HELD_OUT_SENTENCES[1])],
}
"""Long recordings (several chunks each): one voice, conversations, and voices the model never heard."""


def _outcomes(bundle: ModelBundle, path: Path, label: str, cache: AudioCache) -> tuple[str, str]:
    """What evaluate counts for the one row `path` labelled `label`; and what the chunks' average alone would say
    (evaluate before it heard long rows as identify does)."""
    scoring = score_rows(bundle, [Row(path, label)], cache)
    counted = answers_at_threshold(bundle, scoring)
    averaged = answers_at_threshold(bundle, replace(scoring, heard={}))
    return max(counted, key=lambda k: counted[k]), max(averaged, key=lambda k: averaged[k])


def _identified(bundle: ModelBundle, path: Path, label: str) -> str:
    speaker = identify_file(bundle, path, chunk_seconds(bundle)).speaker
    return "unknown" if speaker == UNKNOWN else "named_right" if speaker == label else "named_wrong"


def test_evaluate_counts_the_answer_identify_gives(tmp_path: Path, household_model: Path) -> None:
    bundle = load_model(household_model)
    cache = AudioCache(tmp_path / "cache")
    label = "bob"
    differs = []
    for name, turns in RECORDINGS.items():
        folder = tmp_path / name
        folder.mkdir()
        path = conversation(folder, turns)
        counted, averaged = _outcomes(bundle, path, label, cache)
        assert counted == _identified(bundle, path, label), name
        differs += [name] if averaged != counted else []
    assert differs, "on none of the recordings would the average have said otherwise: the test proves nothing"


def test_each_speaker_s_answers_at_the_threshold_are_reported(tmp_path: Path, household_model: Path) -> None:
    """Top-1 alone read 100% for every speaker while one answer in seven was `unknown`: the report says, per
    speaker, how many of their items the shipped threshold names right and answers `unknown`."""
    bundle = load_model(household_model)
    rows = []
    for name, label in (("alice_alone", "alice"), ("dave_a_stranger", "alice"), ("carol_then_bob", "bob")):
        folder = tmp_path / name
        folder.mkdir()
        rows.append(Row(conversation(folder, RECORDINGS[name]), label))
    scoring = score_rows(bundle, rows, AudioCache(tmp_path / "cache"))
    outcomes = outcomes_at_threshold(bundle, scoring)

    report = closed_set_report(bundle, scoring)

    for speaker in ("alice", "bob"):
        own = [o for o, row in zip(outcomes, rows, strict=True) if row.speaker == speaker]
        shares = report["per_speaker"][speaker]["at_threshold"]
        assert shares == {o: own.count(o) / len(own) for o in ("named_right", "unknown", "named_wrong")}
    assert report["per_speaker"]["alice"]["at_threshold"]["unknown"] > 0, "dave, a stranger, is alice's unknown"
    assert report["per_speaker"]["carol"]["at_threshold"] is None, "no items of carol"
