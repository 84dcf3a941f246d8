"""The speech gate: webrtcvad decisions on 30-ms chunks turned into utterances.

An utterance opens after `start_frames` consecutive voiced chunks and carries a pre-roll so the onset reaches the
model; it closes after `hangover_ms` of non-voiced audio. Non-voiced chunks inside an utterance are held back and
only released if speech resumes, so trailing silence never dilutes the speaker statistics. Pure and synchronous:
the pipeline calls it from the event loop, and one chunk costs a few microseconds.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from spkidd import SAMPLE_RATE
from spkidd.audio.base import CHUNK_SAMPLES

_CHUNK_S = CHUNK_SAMPLES / SAMPLE_RATE
_EMPTY = np.zeros(0, dtype=np.int16)


@dataclass(frozen=True)
class GateSettings:
    """When speech counts as an utterance. Times in ms are rounded up to whole 30-ms chunks. `floor_dbfs`: chunks
    quieter than this RMS level (dB full scale) are never speech."""

    aggressiveness: int = 2
    start_frames: int = 3
    pre_roll_ms: int = 150
    hangover_ms: int = 300
    max_utterance_s: float = 15.0
    min_utterance_s: float = 0.4
    floor_dbfs: float = -60.0

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError(f"gate.aggressiveness must be 0-3, not {self.aggressiveness}")
        if self.start_frames < 1:
            raise ValueError(f"gate.start_frames must be at least 1, not {self.start_frames}")
        if self.pre_roll_ms < 0 or self.hangover_ms < 0:
            raise ValueError("gate.pre_roll_ms and gate.hangover_ms must not be negative")
        if self.max_utterance_s < 1.0:
            raise ValueError(f"gate.max_utterance_s must be at least 1 s, not {self.max_utterance_s}")
        if not 0.0 <= self.min_utterance_s < self.max_utterance_s:
            raise ValueError("gate.min_utterance_s must be between 0 and gate.max_utterance_s")
        if not -120.0 <= self.floor_dbfs <= 0.0:
            raise ValueError(f"gate.floor_dbfs must be -120 to 0 dBFS, not {self.floor_dbfs}")

    @property
    def pre_roll_chunks(self) -> int:
        return _chunks(self.pre_roll_ms)

    @property
    def hangover_chunks(self) -> int:
        return max(1, _chunks(self.hangover_ms))


def _chunks(ms: float) -> int:
    return int(np.ceil(ms / 1000.0 / _CHUNK_S - 1e-9))


@dataclass(frozen=True)
class UtteranceStart:
    """An utterance opened at audio time `start_s`; `audio` is its first samples (pre-roll and trigger)."""

    start_s: float
    audio: np.ndarray


@dataclass(frozen=True)
class SpeechAudio:
    """More int16 samples of the open utterance, contiguous with what came before."""

    start_s: float
    audio: np.ndarray


@dataclass(frozen=True)
class UtteranceEnd:
    """The open utterance closed at `end_s` after `speech_s` seconds of audio. `split` marks a cut at
    max_utterance_s (the speech goes on in the next utterance) rather than a pause or the end of the audio."""

    end_s: float
    speech_s: float
    split: bool = False


GateEvent = UtteranceStart | SpeechAudio | UtteranceEnd


class SpeechGate:
    """Consumes 480-sample int16 chunks in order; returns the gate events each chunk causes."""

    def __init__(self, settings: GateSettings) -> None:
        self.settings = settings
        self._vad = webrtcvad.Vad(settings.aggressiveness)
        self._recent: deque[tuple[float, np.ndarray]] = deque(maxlen=settings.pre_roll_chunks + settings.start_frames)
        self._voiced_run = 0
        self._open = False
        self._held: list[tuple[float, np.ndarray]] = []
        self._emitted = 0
        self._last_end = 0.0
        self._max_samples = int(settings.max_utterance_s * SAMPLE_RATE)
        self._floor_energy = CHUNK_SAMPLES * (32768.0 * 10 ** (settings.floor_dbfs / 20)) ** 2

    @property
    def is_open(self) -> bool:
        return self._open

    def is_speech(self, samples: np.ndarray) -> bool:
        """webrtcvad's decision, except that audio below the level floor is never speech: in modes 0-2 webrtcvad
        keeps saying "speech" for seconds of digital silence after speech (measured on the S1 gaps), which would
        glue turns together. The VAD still sees every chunk so its adaptation is not disturbed."""
        voiced = self._vad.is_speech(samples.tobytes(), SAMPLE_RATE)
        if not voiced:
            return False
        level = samples.astype(np.float32)
        return float(np.dot(level, level)) >= self._floor_energy

    def push(self, samples: np.ndarray, start_s: float) -> list[GateEvent]:
        if samples.shape != (CHUNK_SAMPLES,) or samples.dtype != np.int16:
            raise ValueError(
                f"the gate takes int16 chunks of {CHUNK_SAMPLES} samples, not {samples.dtype}{samples.shape}"
            )
        voiced = self.is_speech(samples)
        self._last_end = start_s + _CHUNK_S
        if not self._open:
            return self._push_closed(samples, start_s, voiced)
        if not voiced:
            self._held.append((start_s, samples))
            if len(self._held) >= self.settings.hangover_chunks:
                return self._close(self._held[0][0])
            return []
        events: list[GateEvent] = []
        if self._held:
            events.append(SpeechAudio(self._held[0][0], np.concatenate([s for _, s in self._held])))
            self._emitted += sum(len(s) for _, s in self._held)
            self._held = []
        events.append(SpeechAudio(start_s, samples))
        self._emitted += len(samples)
        if self._emitted >= self._max_samples:
            end_s = self._last_end
            events.append(UtteranceEnd(end_s, self._emitted / SAMPLE_RATE, split=True))
            events.append(UtteranceStart(end_s, _EMPTY))
            self._emitted = 0
        return events

    def close(self) -> list[GateEvent]:
        """Ends the open utterance, if any, at the end of the audio seen so far (end of stream, or a gap)."""
        self._recent.clear()
        self._voiced_run = 0
        if not self._open:
            return []
        end_s = self._held[0][0] if self._held else self._last_end
        return self._close(end_s)

    def _push_closed(self, samples: np.ndarray, start_s: float, voiced: bool) -> list[GateEvent]:
        self._recent.append((start_s, samples))
        self._voiced_run = self._voiced_run + 1 if voiced else 0
        if self._voiced_run < self.settings.start_frames:
            return []
        first = self._recent[0][0]
        audio = np.concatenate([s for _, s in self._recent])
        self._recent.clear()
        self._voiced_run = 0
        self._open = True
        self._emitted = len(audio)
        return [UtteranceStart(first, audio)]

    def _close(self, end_s: float) -> list[GateEvent]:
        speech_s = self._emitted / SAMPLE_RATE
        for item in self._held[-self.settings.pre_roll_chunks :] if self.settings.pre_roll_chunks else []:
            self._recent.append(item)
        self._held = []
        self._open = False
        self._emitted = 0
        return [UtteranceEnd(end_s, speech_s)]
