"""The speech gate on espeak-ng speech and digital silence."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES
from spkidd.audio.replay import to_chunkable_pcm
from spkidd.synthetic import synth_audio
from spkidd.vad import GateEvent, GateSettings, SpeechAudio, SpeechGate, UtteranceEnd, UtteranceStart
from tests.support.streaming import silence, trim

CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE


@pytest.fixture(scope="module")
def sentence() -> np.ndarray:
    return trim(synth_audio("alice", "The quick brown fox jumps over the lazy dog."))


def run_gate(audio: np.ndarray, settings: GateSettings) -> list[GateEvent]:
    gate = SpeechGate(settings)
    pcm = to_chunkable_pcm(audio)
    events: list[GateEvent] = []
    for i in range(len(pcm) // CHUNK_SAMPLES):
        events += gate.push(pcm[i * CHUNK_SAMPLES : (i + 1) * CHUNK_SAMPLES], i * CHUNK_S)
    return events + gate.close()


def utterances(events: list[GateEvent]) -> list[tuple[float, float, np.ndarray, UtteranceEnd]]:
    """(start_s, end_s, audio, end event) per utterance, checking that events come in start/audio/end order."""
    out = []
    current: list[np.ndarray] | None = None
    start = 0.0
    for event in events:
        if isinstance(event, UtteranceStart):
            assert current is None
            current, start = [event.audio], event.start_s
        elif isinstance(event, SpeechAudio):
            assert current is not None
            current.append(event.audio)
        else:
            assert current is not None
            out.append((start, event.end_s, np.concatenate(current), event))
            current = None
    assert current is None
    return out


def first_loud_sample(audio: np.ndarray) -> int:
    return int(np.flatnonzero(np.abs(audio) > 0.01)[0])


def test_silence_opens_nothing() -> None:
    assert run_gate(silence(3.0), GateSettings()) == []


def test_speech_between_silences_is_one_utterance_with_its_onset(sentence: np.ndarray) -> None:
    lead = 0.6
    audio = np.concatenate([silence(lead), sentence, silence(1.0)])
    settings = GateSettings(pre_roll_ms=150, hangover_ms=300)
    found = utterances(run_gate(audio, settings))
    assert len(found) == 1
    start, end, samples, ended = found[0]
    onset = (int(lead * SAMPLE_RATE) + first_loud_sample(sentence)) / SAMPLE_RATE
    speech_end = lead + len(sentence) / SAMPLE_RATE
    assert onset - 0.15 - 2 * CHUNK_S <= start <= onset
    assert speech_end - 0.5 <= end <= speech_end + 0.25
    assert ended.speech_s == pytest.approx(len(samples) / SAMPLE_RATE)
    assert not ended.split


def test_pre_roll_delivers_audio_before_the_trigger(sentence: np.ndarray) -> None:
    audio = np.concatenate([silence(1.0), sentence, silence(1.0)])
    for pre_roll_ms in (0, 300):
        settings = GateSettings(pre_roll_ms=pre_roll_ms, start_frames=3)
        events = run_gate(audio, settings)
        opening = events[0]
        assert isinstance(opening, UtteranceStart)
        assert len(opening.audio) == (settings.pre_roll_chunks + settings.start_frames) * CHUNK_SAMPLES
        # the first utterance sample is the original sample at its start time: nothing lost or shifted
        first = round(opening.start_s * SAMPLE_RATE)
        pcm = to_chunkable_pcm(audio)
        assert np.array_equal(opening.audio, pcm[first : first + len(opening.audio)])
    with_pre_roll = run_gate(audio, GateSettings(pre_roll_ms=300))[0]
    without = run_gate(audio, GateSettings(pre_roll_ms=0))[0]
    assert isinstance(with_pre_roll, UtteranceStart) and isinstance(without, UtteranceStart)
    assert without.start_s - with_pre_roll.start_s == pytest.approx(10 * CHUNK_S)


def test_hangover_bridges_short_pauses_only(sentence: np.ndarray) -> None:
    audio = np.concatenate([silence(0.5), sentence, silence(0.24), sentence, silence(1.0)])
    assert len(utterances(run_gate(audio, GateSettings(hangover_ms=450)))) == 1
    assert len(utterances(run_gate(audio, GateSettings(hangover_ms=120)))) >= 2


def test_trailing_silence_is_not_part_of_the_utterance(sentence: np.ndarray) -> None:
    """The 600 ms of hangover silence are held back: the utterance ends with the sentence's last chunk, give or take
    the one chunk the sentence's end falls in, and carries no more than the pre-roll besides the sentence."""
    audio = np.concatenate([silence(0.5), sentence, silence(2.0)])
    settings = GateSettings(hangover_ms=600)
    ((_, end_s, samples, _),) = utterances(run_gate(audio, settings))
    assert end_s == pytest.approx(0.5 + len(sentence) / SAMPLE_RATE, abs=CHUNK_S)
    trailing_zeros = len(samples) - 1 - np.flatnonzero(samples)[-1]
    assert trailing_zeros < CHUNK_SAMPLES, trailing_zeros / SAMPLE_RATE
    assert len(samples) <= len(sentence) + (settings.pre_roll_chunks + 1) * CHUNK_SAMPLES


def test_long_speech_is_split_into_consecutive_utterances(sentence: np.ndarray) -> None:
    speech = np.concatenate([sentence] * 3)
    audio = np.concatenate([silence(0.5), speech, silence(1.0)])
    found = utterances(run_gate(audio, GateSettings(hangover_ms=900, max_utterance_s=1.0)))
    assert len(found) >= 3
    for (_, end, samples, ended), (next_start, *_) in itertools.pairwise(found):
        if ended.split:
            assert next_start == pytest.approx(end)
        assert len(samples) <= 1.0 * SAMPLE_RATE + 12 * CHUNK_SAMPLES
    assert any(ended.split for *_, ended in found)


def test_close_ends_an_open_utterance(sentence: np.ndarray) -> None:
    gate = SpeechGate(GateSettings())
    pcm = to_chunkable_pcm(np.concatenate([silence(0.3), sentence[:SAMPLE_RATE]]))
    events: list[GateEvent] = []
    for i in range(len(pcm) // CHUNK_SAMPLES):
        events += gate.push(pcm[i * CHUNK_SAMPLES : (i + 1) * CHUNK_SAMPLES], i * CHUNK_S)
    assert gate.is_open
    closing = gate.close()
    assert len(closing) == 1 and isinstance(closing[0], UtteranceEnd)
    assert not gate.is_open and gate.close() == []


def test_bad_input_and_settings_are_refused() -> None:
    gate = SpeechGate(GateSettings())
    with pytest.raises(ValueError, match="480"):
        gate.push(np.zeros(320, dtype=np.int16), 0.0)
    with pytest.raises(ValueError, match="aggressiveness"):
        GateSettings(aggressiveness=4)
    with pytest.raises(ValueError, match="min_utterance_s"):
        GateSettings(min_utterance_s=20.0)


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_digital_silence_after_speech_closes_in_every_mode(sentence: np.ndarray, aggressiveness: int) -> None:
    """webrtcvad alone keeps calling digital silence after speech "speech" in modes 0-2; the level floor fixes it."""
    audio = np.concatenate([silence(0.5), sentence, sentence, silence(0.45), sentence, silence(1.0)])
    found = utterances(run_gate(audio, GateSettings(aggressiveness=aggressiveness, hangover_ms=300)))
    assert len(found) == 2
    first_end = 0.5 + 2 * len(sentence) / SAMPLE_RATE
    assert found[0][1] <= first_end + 0.1 < found[1][0] + 0.3
